"""``DATASET.md``: a generated dataset's card, written beside ``index.json`` when a job finishes.

For a person who finds the folder: what it is (synthetic tumors, not annotations), how many
samples and shards in which formats, the generator's version, profile and crop settings, the scans
the samples were made from (counted per source) with the licences their datasets are published
under, and how to read, verify and audit it. It is not part of the dataset's identity (the id,
``index.json`` and ``verify`` never read it).
"""

from __future__ import annotations

from collections import Counter

from tumorforge.generator import GENERATOR_VERSION

# Licences the public datasets are published under, by the source name manifests give them
# (``manifests/layouts.py``). The phantoms tumorforge writes use the same layouts and names but
# hold no patient data.
LICENCES = {
    "lits": "LiTS: CC BY-NC-SA 4.0",
    "msd": "Medical Segmentation Decathlon: CC BY-SA 4.0",
    "btcv": "BTCV (Synapse syn3193805): the Synapse project's terms of use",
    "chaos": "CHAOS: CC BY-SA 4.0",
}


def dataset_card(plan, index) -> str:
    """The card's Markdown from the job's ``plan`` and the ``index`` just written."""
    spec, gen = plan.spec, plan.spec.generator
    sources = Counter(e.source for e in plan.scans.values())
    roles = Counter(e.role for e in plan.scans.values())
    lines = [
        f"# Dataset {index.dataset_id}", "",
        f"Synthetic tumors painted into CT scans by tumorforge (generator "
        f"{GENERATOR_VERSION}): image/label crops for training segmentation "
        f"models. The labels are the generator's own (0 background, 1 organ, 2 tumor), not a "
        f"radiologist's.", "",
        "## What it holds", "",
        f"- {index.samples} samples in {index.shard_count} shards of up to "
        f"{index.samples_per_shard}, formats: {', '.join(index.formats)}",
        f"- profile `{gen.profile}`, organ `{gen.organ}`, crops of "
        f"{' x '.join(map(str, gen.crop_size))} voxels at "
        f"{' x '.join(f'{s:g}' for s in gen.target_spacing_mm)} mm, "
        f"{gen.negative_fraction:.0%} without tumor, root seed {spec.root_seed}",
        f"- made from {len(plan.scans)} scans "
        f"({', '.join(f'{n} {r}' for r, n in sorted(roles.items()))})",
        "", "## Sources and their licences", "",
        "| source | scans | licence |", "|---|---|---|",
        *(f"| {s} | {n} | {LICENCES.get(s, 'not known to tumorforge: check the source')} |"
          for s, n in sorted(sources.items())),
        "",
        "Phantom scans written by `tumorforge phantoms` carry these layouts' names but are "
        "synthetic and hold no patient data. Derived data keeps its sources' terms.", "",
        "## Use", "",
        "- `tumorforge inspect DIR` shows what it holds, `tumorforge verify DIR` checks every "
        "object against `index.json`, `tumorforge audit DIR --index N` shows how sample N was "
        "made and regenerates it from its seed.",
        "- `tumorforge train --source DIR` trains on it; `index.json` is the table of contents, "
        "`plan.json` the job's plan (its hash is the dataset id).", ""]
    return "\n".join(lines)
