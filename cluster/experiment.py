"""``tumorforge experiment SPEC.yaml``: the paper's experiment (real vs synthetic vs real+synthetic
tumors, k-fold) as one resumable command.

For each test fold of an annotated manifest (LiTS-style, with folds) and each arm, it generates the
arm's training dataset (a generation job: the ``real`` profile crops the training folds' own tumors;
a synthesis profile paints tumors into the healthy pool, once for every fold, since the pool does not
depend on the fold), trains a model on it (or on a mix of other arms' datasets), and scores it on the
held-out fold. Then it pools each arm's cases over the folds, tests every pair of arms on the same
cases (by scan sha256), and writes ``experiment.json`` and a report with the lineage of every number.

Every step is skipped when its result is already there and belongs to this spec: a generation job
resumes its own shards, training resumes from its checkpoints, an evaluation is redone only if it
is missing or was made from another checkpoint. So a half-finished experiment finishes by rerunning
the same command.

This module orchestrates every stage, as the demo does (it is allowed to import them all).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field

import yaml

from tumorforge.manifests.records import RecordError, canonical_json, typed_fields
from tumorforge.manifests.errors import UserError, one_line

RESULT = "experiment.json"


class ExperimentError(UserError, ValueError):
    """A spec or an input the experiment cannot use; the message names it."""


@dataclass(frozen=True)
class Arm:
    """One way of making training data and a model. ``profile`` (a generation profile; ``real``
    crops the training folds' own tumors) or ``mix`` (names of other arms whose datasets are
    mixed, equal weights; a mix of one arm trains on that arm's dataset). ``generator``:
    GeneratorConfig fields over the experiment's; ``train``: TrainConfig fields over the
    experiment's (for example another model on the same data). ``ablates``: the arm this one is
    an ablation of (the same profile with the settings it changes); the report then says what
    changing them moved."""

    name: str
    profile: str = ""
    mix: tuple[str, ...] = ()
    samples: int = 0
    generator: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    ablates: str = ""


@dataclass(frozen=True)
class ExperimentSpec:
    """What an experiment runs; read from YAML by :func:`load_spec`."""

    name: str
    annotated: str                    # manifest of annotated scans with folds (role tumor/healthy)
    healthy: str                      # manifest of the healthy pool synthesis paints into
    folds: tuple[int, ...]            # the test folds to run
    arms: tuple[Arm, ...]
    out: str = "experiment"
    samples: int = 512                # samples per generated dataset (an arm may say otherwise)
    samples_per_shard: int = 64
    root_seed: int = 0
    actors: int = 2
    generator: dict = field(default_factory=dict)   # GeneratorConfig fields of every arm
    train: dict = field(default_factory=dict)       # TrainConfig fields (model, steps, ...)
    evaluate: dict = field(default_factory=dict)    # EVALUATE_KEYS: overlap, detection, ...
    allow_roots: tuple[str, ...] = ()
    organ: str = "liver"              # the organ of every arm's tumors (an ORGANS entry)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["arms"] = [dataclasses.asdict(a) for a in self.arms]
        if out["organ"] == "liver":   # added later: left out at its default, so the specs (and
            del out["organ"]          # spec_sha256) of liver experiments are what they were
        return json.loads(json.dumps(out))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.to_json()).encode()).hexdigest()

    @property
    def roots(self) -> tuple[str, ...]:
        """Where scan paths may point: the allowed roots and the folders of the annotated manifest
        and the healthy pool (the fold manifests the experiment writes name the same scans)."""
        from tumorforge.manifests import storage
        return (*self.allow_roots, storage.parent(self.annotated), storage.parent(self.healthy))


EVALUATE_KEYS = ("overlap", "detection", "min_dice", "sw_batch", "roi", "tolerance_mm", "flips",
                 "min_liver_contact")


def load_spec(path: str, out: str | None = None) -> ExperimentSpec:
    """Read and check an experiment spec (YAML); ``out`` overrides its output folder."""
    try:
        with open(path) as f:
            obj = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: cannot read the experiment spec ({exc})") from None
    try:
        fields = typed_fields(ExperimentSpec, obj, path)       # the arms too, field by field
    except RecordError as exc:
        raise ExperimentError(str(exc)) from None
    if out:
        fields["out"] = out
    spec = ExperimentSpec(**fields)
    _check(spec, path)
    return spec


def _check(spec: ExperimentSpec, where: str) -> None:
    from tumorforge.manifests.organs import OrganError, get_organ
    try:
        get_organ(spec.organ, f"{where}: organ")
    except OrganError as exc:
        raise ExperimentError(str(exc)) from None
    for section, gen in [("generator", spec.generator)] + [(f"arm {a.name!r}: generator", a.generator)
                                                           for a in spec.arms]:
        if gen.get("organ", spec.organ) != spec.organ:
            raise ExperimentError(f"{where}: {section} names organ {gen['organ']!r} but the "
                                  f"experiment's organ is {spec.organ!r}; name it once (organ:)")
    names = [a.name for a in spec.arms]
    if not names or len(set(names)) != len(names):
        raise ExperimentError(f"{where}: arms need distinct names, found {names}")
    for a in spec.arms:
        if bool(a.profile) == bool(a.mix):
            raise ExperimentError(f"{where}: arm {a.name!r}: give either a profile or a mix")
        unknown = sorted(set(a.mix) - {b.name for b in spec.arms if b.profile})
        if unknown:
            raise ExperimentError(f"{where}: arm {a.name!r} mixes {unknown}, which are not "
                                  f"arms with a profile")
    by_name = {a.name: a for a in spec.arms}
    for a in spec.arms:
        base = by_name.get(a.ablates) if a.ablates else None
        if a.ablates and (base is None or base is a or not a.profile
                          or base.profile != a.profile):
            raise ExperimentError(f"{where}: arm {a.name!r} ablates {a.ablates!r}: expected "
                                  f"another arm with the same profile ({a.profile or 'none'})")
        if base is not None and not changed_settings(base, a):
            raise ExperimentError(f"{where}: arm {a.name!r} ablates {a.ablates!r} but changes "
                                  f"none of its settings")
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.trainer.config import ConfigError, load_config
    for a in spec.arms:     # a bad generator or training field fails now, not after other arms ran
        if a.profile:
            try:
                GeneratorConfig.from_json({**spec.generator, **a.generator, "profile": a.profile},
                                          f"{where}: arm {a.name!r}: generator")
            except UserError as exc:
                raise ExperimentError(str(exc)) from None
        try:
            load_config(None, {**spec.train, **a.train, "sources": [{"url": "-"}], "out": "-"})
        except ConfigError as exc:
            raise ExperimentError(f"{where}: arm {a.name!r}: train: {exc}") from None
    unknown = sorted(set(spec.evaluate) - set(EVALUATE_KEYS))
    if unknown:
        raise ExperimentError(f"{where}: evaluate: unknown field(s) {unknown}; expected some of "
                              f"{list(EVALUATE_KEYS)}")
    if not spec.folds:
        raise ExperimentError(f"{where}: folds: expected at least one test fold")


# ---------------------------------------------------------------------------------------------
# The steps


@dataclass(frozen=True)
class FoldInputs:
    """The manifests one test fold trains and tests with (written into the fold's folder)."""

    train: str          # the training folds' scans
    test: str           # the test fold's scans
    real: str           # the real arm's scans: the training folds plus the healthy pool
    healthy: str        # the healthy pool without the test fold's scans (the spec's own if none)
    held_out: tuple[str, ...]   # scan ids of the pool left out because the test fold has them


def _split(spec: ExperimentSpec, fold: int, folder: str) -> FoldInputs:
    """Write one fold's manifests. Scans are the same scan when their image sha256 is: a test
    scan in the healthy pool is left out of it for this fold (no model trains on a scan it is
    tested on), and the real arm gets the pool's healthy scans beside its tumor scans, so that its
    negative crops come from the same scans as the synthetic arms' crops."""
    from tumorforge.manifests.schema import default_roots, read_manifest, write_jsonl
    entries = read_manifest(spec.annotated, default_roots(spec.annotated, spec.allow_roots))
    if any(e.fold is None for e in entries):
        raise ExperimentError(f"{spec.annotated}: scans without a fold; assign folds first "
                              f"(tumorforge manifest split)")
    test = [e for e in entries if e.fold == fold]
    train = [e for e in entries if e.fold != fold]
    if not test or not any(e.role == "tumor" for e in train):
        raise ExperimentError(f"{spec.annotated}: fold {fold} leaves {len(test)} test scan(s) and "
                              f"{sum(e.role == 'tumor' for e in train)} training scan(s) with "
                              f"tumors; expected some of each")
    pool = read_manifest(spec.healthy, default_roots(spec.healthy, spec.allow_roots))
    tested = {e.sha256["image"] for e in test}
    kept = [e for e in pool if e.sha256["image"] not in tested]
    held_out = tuple(sorted(e.scan_id for e in pool if e.sha256["image"] in tested))
    known = {e.sha256["image"] for e in train}
    real = train + [e for e in kept if e.sha256["image"] not in known and e.role == "healthy"]
    os.makedirs(folder, exist_ok=True)
    path = lambda name: os.path.join(folder, name)
    write_jsonl(path("train.jsonl"), train)
    write_jsonl(path("test.jsonl"), test)
    write_jsonl(path("real-train.jsonl"), real)
    healthy = spec.healthy
    if held_out:
        healthy = path("healthy.jsonl")
        write_jsonl(healthy, kept)
    return FoldInputs(path("train.jsonl"), path("test.jsonl"), path("real-train.jsonl"), healthy,
                      held_out)


def _generate(spec: ExperimentSpec, arm: Arm, manifest: str, output: str, log) -> str:
    """The arm's dataset (a resumable generation job); returns its dataset id."""
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    from .job import run_job
    from .spec import JobSpec, Resources
    config = GeneratorConfig.from_json({"organ": spec.organ, **spec.generator, **arm.generator,
                                        "profile": arm.profile})
    job = JobSpec(manifest=manifest, output=output, samples=arm.samples or spec.samples,
                  samples_per_shard=spec.samples_per_shard, root_seed=spec.root_seed,
                  formats=("zarr",), allow_roots=spec.roots, generator=config,
                  resources=Resources(actors=spec.actors))
    try:
        done = Dataset(output)
    except DatasetError:
        done = None
    if done is not None:                  # finished before: reuse it if this spec made it
        want = {k: v for k, v in job.to_json().items()      # the format is how it is checked
                if k not in ("output", "resources", "backend", "dataset_format")}
        found = {k: v for k, v in done.index.spec.items() if k != "backend"}
        if found != want:
            raise ExperimentError(f"{output} holds a dataset made with other settings than arm "
                                  f"{arm.name!r} now asks for; use another --out or remove it")
        return done.dataset_id
    result = run_job(job, progress=False, log=lambda m: log(f"  {m}"))
    if not result.ok:
        raise ExperimentError(f"generation of arm {arm.name!r} into {output} failed: "
                              f"{result.failed}")
    return result.dataset_id


def _train(spec: ExperimentSpec, arm: Arm, datasets: list[str], folder: str, log) -> str:
    """The arm's model trained on ``datasets`` (equal weights) in ``folder``; resumes. Returns the
    newest checkpoint's path."""
    from tumorforge.trainer import checkpoint as ckpt
    from tumorforge.trainer.config import load_config
    from tumorforge.trainer.train import train
    cfg = load_config(None, {**spec.train, **arm.train, "sources": [{"url": d} for d in datasets],
                             "out": folder, "seed": spec.root_seed})
    steps = ckpt.list_steps(os.path.join(folder, "checkpoints"))
    if not steps or steps[-1] < cfg.steps:
        train(cfg, resume=bool(steps), log=lambda m: log(f"  {m}"))
    folder_ck = os.path.join(folder, "checkpoints")
    return ckpt.path_for(folder_ck, ckpt.list_steps(folder_ck)[-1])


def _evaluate(spec: ExperimentSpec, checkpoint: str, test: str, folder: str, log) -> dict:
    """The evaluation of ``checkpoint`` on the test fold; kept if it was made from that very
    checkpoint (sha256) with the spec's evaluation settings, redone otherwise."""
    from tumorforge.evaluation.evaluate import evaluate, file_sha256
    from tumorforge.evaluation.metrics import MIN_LIVER_CONTACT, detection_rule_text
    kw = dict(spec.evaluate)
    contact = float(kw.get("min_liver_contact", MIN_LIVER_CONTACT))
    rule = detection_rule_text(kw.get("detection", "dice"), kw.get("min_dice", 0.2))
    summary_path = os.path.join(folder, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            done = json.load(f)
        inference = done.get("inference", {})
        if (done.get("checkpoint_sha256") == file_sha256(checkpoint)
                and done.get("detection_rule") == rule
                and inference.get("roi_override", "unrecorded") == kw.get("roi")
                and inference.get("overlap") == kw.get("overlap", 0.75)
                and inference.get("test_time_flips") == bool(kw.get("flips", False))
                and inference.get("min_liver_contact", 0.0) == contact
                and done.get("nsd_tolerance_mm") == kw.get("tolerance_mm", 2.0)):
            return done
    return evaluate(checkpoint, test, folder, allow_roots=spec.roots,
                    overlap=kw.get("overlap", 0.75), sw_batch=kw.get("sw_batch", 2),
                    roi=kw.get("roi"), tolerance_mm=kw.get("tolerance_mm", 2.0),
                    detection=kw.get("detection", "dice"), min_dice=kw.get("min_dice", 0.2),
                    flips=bool(kw.get("flips", False)), min_liver_contact=contact,
                    log=lambda m: log(f"  {m}"))


def run(spec: ExperimentSpec, log=print) -> dict:
    """Run (or finish) the experiment; returns what ``experiment.json`` holds."""
    from tumorforge.evaluation.metric_table import summarize
    out = spec.out
    os.makedirs(out, exist_ok=True)
    profiled = [a for a in spec.arms if a.profile]
    lineage: dict = {"spec": spec.to_json(), "spec_sha256": spec.sha256, "folds": {}}
    pooled: dict[str, list] = {a.name: [] for a in spec.arms}
    shared: dict[str, tuple[str, str]] = {}         # synthesis datasets: the same for every fold
    for fold in spec.folds:
        fdir = os.path.join(out, f"fold-{fold}")
        inputs = _split(spec, fold, fdir)
        log(f"fold {fold}: training scans {inputs.train}, test scans {inputs.test}"
            + (f"; left out of the healthy pool (tested in this fold): {list(inputs.held_out)}"
               if inputs.held_out else ""))
        datasets: dict[str, tuple[str, str]] = {}   # arm -> (url, dataset id)
        for arm in profiled:
            if arm.profile == "real":
                url = os.path.join(fdir, arm.name, "dataset")
                log(f"fold {fold}, arm {arm.name}: real tumors of the training folds, negatives "
                    f"also from the healthy pool -> {url}")
                datasets[arm.name] = url, _generate(spec, arm, inputs.real, url, log)
            elif inputs.held_out:           # this fold's own pool: a dataset of its own
                url = os.path.join(fdir, arm.name, "dataset")
                log(f"fold {fold}, arm {arm.name}: {arm.profile} tumors in the fold's healthy "
                    f"pool -> {url}")
                datasets[arm.name] = url, _generate(spec, arm, inputs.healthy, url, log)
            else:
                if arm.name not in shared:
                    url = os.path.join(out, "shared", arm.name, "dataset")
                    log(f"arm {arm.name}: {arm.profile} tumors in the healthy pool -> {url}")
                    shared[arm.name] = url, _generate(spec, arm, spec.healthy, url, log)
                datasets[arm.name] = shared[arm.name]
        lineage["folds"][str(fold)] = {"train_manifest": inputs.train,
                                       "test_manifest": inputs.test,
                                       "real_manifest": inputs.real,
                                       "healthy_manifest": inputs.healthy,
                                       "held_out_of_pool": list(inputs.held_out), "arms": {}}
        for arm in spec.arms:
            sources = [datasets[m][0] for m in (arm.mix or (arm.name,))]
            adir = os.path.join(fdir, arm.name)
            log(f"fold {fold}, arm {arm.name}: training on {len(sources)} dataset(s)")
            checkpoint = _train(spec, arm, sources, os.path.join(adir, "train"), log)
            log(f"fold {fold}, arm {arm.name}: evaluating {checkpoint} on fold {fold}")
            summary = _evaluate(spec, checkpoint, inputs.test,
                                os.path.join(adir, "evaluation"), log)
            pooled[arm.name] += [{**c, "fold": fold} for c in summary["cases"]]
            lineage["folds"][str(fold)]["arms"][arm.name] = {
                "datasets": [{"url": datasets[m][0], "dataset_id": datasets[m][1]}
                             for m in (arm.mix or (arm.name,))],
                "checkpoint": checkpoint, "checkpoint_sha256": summary["checkpoint_sha256"],
                "summary": os.path.join(adir, "evaluation", "summary.json"),
                "manifest_sha256": summary["manifest_sha256"]}
    arms = {}
    for name, cases in pooled.items():
        path = os.path.join(out, f"{name}-cases.json")
        with open(path, "w") as f:
            json.dump({"cases": cases}, f, allow_nan=False)
        arms[name] = {"cases": path, "aggregate": summarize(cases, seed=spec.root_seed)}
    result = {"experiment": spec.name, "arms": arms, "pairs": _pairs(arms), "lineage": lineage}
    with open(os.path.join(out, RESULT), "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    _report(out, result)
    return result


def _pairs(arms: dict) -> list[dict]:
    """Wilcoxon on tumor DSC and McNemar on lesions for every pair of arms, on the same cases."""
    from tumorforge.evaluation.evaluate import compare
    names = list(arms)
    return [compare(arms[a]["cases"], arms[b]["cases"])
            for i, a in enumerate(names) for b in names[i + 1:]]


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.0f} %" if pct else f"{v:.3f}"


def comparison_table(arms: dict) -> tuple[list[str], list[list[str]]]:
    """The arms side by side: the header and a row per arm (``arms``: name -> a dict with the
    arm's pooled ``aggregate``), a column for every figure of the metrics table that has a brief
    name, each with its 95 % interval and note."""
    from tumorforge.evaluation.metric_table import METRICS, with_interval
    head, rows = ["arm"], []
    for name, arm in arms.items():
        cells = []
        for metric in METRICS.values():
            number = functools.partial(_fmt, pct=True) if metric.percent else \
                (lambda v, digits=metric.digits: f"{v:.{digits}f}")
            cells += [(f.brief, with_interval(f.value, f.ci95, number)
                       + (f" ({f.note})" if f.note else ""))
                      for f in metric.figures(arm["aggregate"]) if f.brief is not None]
        if not rows:
            head += [brief for brief, _ in cells]
        rows.append([name, *(cell for _, cell in cells)])
    return head, rows


def _flat(obj, prefix: str = "") -> dict:
    """Nested settings as ``{"a.b": value}``."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def changed_settings(base: Arm, arm: Arm) -> list[tuple[str, object, object]]:
    """The settings ``arm`` gives otherwise than ``base``: (``generator.x.y`` / ``train.x`` /
    ``samples``, base's value or None where it keeps the experiment's, arm's value)."""
    a = _flat({"generator": base.generator, "train": base.train, "samples": base.samples or None})
    b = _flat({"generator": arm.generator, "train": arm.train, "samples": arm.samples or None})
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# What the issue that set the default tumor model asks of a synthetic arm against real tumors
# (issue 28): tumor DSC >= 0.9 x the real arm's, sensitivity for lesions > 10 mm >= 80 %, false-
# positive lesions per scan <= 1.5 x the real arm's.
TARGETS = (0.9, 0.8, 1.5)
SIGNIFICANT = 0.05


def _pair(result: dict, a: str, b: str) -> tuple[dict | None, bool]:
    """The paired tests of arms ``a`` and ``b`` and whether they are stored as (b, a)."""
    for p in result["pairs"]:
        names = tuple(os.path.basename(x).removesuffix("-cases.json") for x in (p["a"], p["b"]))
        if names in ((a, b), (b, a)):
            return p, names == (b, a)
    return None, False


def _figures(aggregate: dict) -> tuple[float | None, dict, float | None]:
    return (aggregate["tumor_dice"]["mean"], aggregate["detection"][">10"],
            aggregate["false_positive_lesions_per_scan"])


def _spec_arms(result: dict) -> list[Arm]:
    arms = result["lineage"].get("spec", {}).get("arms", [])
    return [Arm(**{**a, "mix": tuple(a.get("mix", ()))}) for a in arms]


def ablation_rows(result: dict) -> list[list[str]]:
    """One row per arm that ablates another: what it changes, and the change (ablation minus
    its base) of tumor DSC, sensitivity > 10 mm and FP lesions per scan, each with its paired
    test, then in words what moved (p < 0.05) and what did not."""
    rows = []
    arms, spec_arms = result["arms"], _spec_arms(result)
    for arm in spec_arms:
        if not arm.ablates or arm.name not in arms or arm.ablates not in arms:
            continue
        base = next(a for a in spec_arms if a.name == arm.ablates)
        change = "; ".join(f"{k} {'default' if v0 is None else v0} -> {v1}"
                           for k, v0, v1 in changed_settings(base, arm))
        d0, s0, f0 = _figures(arms[base.name]["aggregate"])
        d1, s1, f1 = _figures(arms[arm.name]["aggregate"])
        pair, swapped = _pair(result, base.name, arm.name)
        p_dice = p_les = p_fp = None
        gained = 0                          # lesions the ablation finds and its base misses, net
        if pair is not None:
            p_dice = pair["wilcoxon_tumor_dice"]["p_value"]
            p_les = pair["mcnemar_lesions"]["p_value"]
            p_fp = pair.get("wilcoxon_false_positives", {}).get("p_value")
            only_base, only_arm = (pair["mcnemar_lesions"][k] for k in ("a_only", "b_only"))
            gained = (only_base - only_arm) if swapped else (only_arm - only_base)
        direction = lambda v: "up" if v > 0 else "down"
        moved = [f"{what} {direction(v)}" for what, p, v in (
            ("tumor DSC", p_dice, 0 if d0 is None or d1 is None else d1 - d0),
            ("lesions found", p_les, gained),
            ("false positives", p_fp, 0 if f0 is None or f1 is None else f1 - f0))
            if p is not None and p < SIGNIFICANT and v != 0]
        delta = lambda x, y, fmt: "n/a" if x is None or y is None else fmt(y - x)
        rows.append([arm.name, base.name, change,
                     f"{delta(d0, d1, lambda v: f'{v:+.3f}')} (p {_fmt(p_dice)})",
                     f"{s0['detected']}/{s0['lesions']} -> {s1['detected']}/{s1['lesions']} "
                     f"(McNemar p {_fmt(p_les)})",
                     f"{delta(f0, f1, lambda v: f'{v:+.1f}')} (p {_fmt(p_fp)})",
                     ("moved " + ", ".join(moved)) if moved else
                     f"nothing at p < {SIGNIFICANT:g}"])
    return rows


def target_rows(result: dict) -> list[list[str]]:
    """Every synthetic arm against the first arm of real tumors, on :data:`TARGETS`: tumor DSC
    ratio, sensitivity for lesions > 10 mm, FP lesions per scan ratio, each met or missed."""
    spec_arms = _spec_arms(result)
    real = next((a.name for a in spec_arms if a.profile == "real"), None)
    if real is None or real not in result["arms"]:
        return []
    dr, _, fr = _figures(result["arms"][real]["aggregate"])
    verdict = lambda ok: "n/a" if ok is None else ("met" if ok else "missed")
    rows = []
    for a in spec_arms:
        if a.profile in ("", "real") or a.name not in result["arms"]:
            continue
        d, s, f = _figures(result["arms"][a.name]["aggregate"])
        rd = d / dr if d is not None and dr else None
        rf = f / fr if f is not None and fr else None
        fp_ok = (f <= TARGETS[2] * fr) if f is not None and fr is not None else None
        sens_ok = None if s["sensitivity"] is None else s["sensitivity"] >= TARGETS[1]
        rows.append([a.name,
                     f"{_fmt(rd)} x ({verdict(None if rd is None else rd >= TARGETS[0])})",
                     f"{s['detected']}/{s['lesions']} ({verdict(sens_ok)})",
                     f"{'n/a' if rf is None else f'{rf:.2f}'} x ({verdict(fp_ok)})"])
    return rows


def _report(out: str, result: dict) -> None:
    """``report.md`` and a self-contained ``report.html``: one row per arm, the pair tests."""
    from tumorforge.evaluation.metrics import INTERVALS
    from tumorforge.evaluation.report import FROC_HEADER, froc_rows, html_page, plot_froc
    head, rows = comparison_table(result["arms"])
    pairs = [(f"{os.path.basename(p['a']).removesuffix('-cases.json')} vs "
              f"{os.path.basename(p['b']).removesuffix('-cases.json')}", str(p["shared_cases"]),
              _fmt(p["wilcoxon_tumor_dice"]["p_value"]),
              f"{p['mcnemar_lesions']['a_only']} / {p['mcnemar_lesions']['b_only']}",
              _fmt(p["mcnemar_lesions"]["p_value"]),
              _fmt(p.get("wilcoxon_false_positives", {}).get("p_value")))
             for p in result["pairs"]]

    def table(h, rs):
        return "\n".join(["| " + " | ".join(h) + " |", "|" + "---|" * len(h),
                          *("| " + " | ".join(r) + " |" for r in rs)])
    rule = next(iter(result["arms"].values()))["aggregate"]["detection_rule"]
    md = [f"# Experiment {result['experiment']}", "",
          f"Folds {list(result['lineage']['folds'])}; cases pooled over folds. {INTERVALS}. "
          f"Detection rule: {rule}.", "",
          table(head, rows), "", "## Paired tests (same scans, matched by sha256)", "",
          table(("pair", "cases", "Wilcoxon p (tumor DSC)", "lesions found only by A / B",
                 "McNemar p", "Wilcoxon p (FP lesions)"), pairs)
          if pairs else "One arm: no pair to test.", "",
          "Lineage (spec sha256, datasets, checkpoints, manifests): experiment.json.", ""]
    targets = target_rows(result)
    if targets:
        md += ["## Synthetic arms against the real arm", "",
               f"Targets: tumor DSC >= {TARGETS[0]:g} x the real arm's, sensitivity for lesions "
               f"> 10 mm >= {TARGETS[1] * 100:.0f} %, FP lesions per scan <= {TARGETS[2]:g} x "
               f"the real arm's.", "",
               table(("arm", "tumor DSC / real", "lesions > 10 mm found",
                      "FP lesions per scan / real"), targets), ""]
    ablations = ablation_rows(result)
    if ablations:
        md += ["## Ablations: one factor changed, what it moved", "",
               "Each row is an arm minus the arm it ablates, on the same scans: tumor DSC and "
               "FP lesions per scan with paired Wilcoxon p, lesions > 10 mm with the McNemar p "
               f"over all lesions; \"moved\" names the differences with p < {SIGNIFICANT:g}.",
               "", table(("ablation", "of", "changes", "tumor DSC change", "lesions > 10 mm",
                          "FP lesions / scan change", "what moved"), ablations), ""]
    curves = {n: a["aggregate"]["froc"] for n, a in result["arms"].items()
              if a["aggregate"].get("froc")}
    if curves:
        plot_froc(curves, os.path.join(out, "froc.png"))
        md += ["## FROC over the tumor probability threshold", "",
               "Predicted tumor = tumor probability >= threshold inside the post-processed liver; "
               "the table above is each model's argmax answer.", "", "![FROC](froc.png)", ""]
        for n, points in curves.items():
            md += [f"### {n}", "", table(FROC_HEADER, froc_rows(points)), ""]
    text = "\n".join(md)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(html_page(text, out))


def _cmd(args) -> int:
    import sys
    spec = load_spec(args.spec, args.out)
    try:
        run(spec, log=lambda m: print(m, file=sys.stderr))
    except OSError as exc:          # a folder it cannot write, a file it cannot read
        raise ExperimentError(one_line(exc)) from None
    print(open(os.path.join(spec.out, "report.md")).read())
    print(f"wrote {os.path.join(spec.out, RESULT)}, report.md and report.html")
    return 0


def register(sub) -> None:
    p = sub.add_parser("experiment", help="the paper's experiment: real vs synthetic vs both, "
                                          "k-fold, with a report",
                       description="For each test fold and arm of SPEC: generate the arm's "
                                   "dataset, train, evaluate on the held-out fold; then pool the "
                                   "folds, test every pair of arms on the same scans and write "
                                   "experiment.json and report.md/html. Rerunning finishes a "
                                   "half-done experiment.")
    p.add_argument("spec", help="experiment spec (YAML), e.g. cluster/examples/experiment-cpu-small.yaml")
    p.add_argument("--out", help="output folder (default: the spec's out)")
    p.set_defaults(func=_cmd)
