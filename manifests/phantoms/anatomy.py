"""The canonical patient: per-case tissue HU and the abdominal anatomy as painting layers.

Millimetres, RAS+ (+x patient Right, +y Anterior, +z Superior); body centre at x = y = 0, the
right hemidiaphragm dome at z = 0, vertebral bodies centred at y = -40. Every case draws its own
tissue HU and jitters its organs, but the layout is written once, in this frame; :mod:`phantom`
maps it to each case's world frame. The liver is left as lobes, bounds and cuts: its size and
vessel trees depend on the case's drawn liver volume (:mod:`liver`). Organ labels are the 13 BTCV
codes (``ORGAN_CODES``), which the BTCV layout writes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raster import AIR_HU, Layer
from .shapes import (Capsule, Diaphragm, Ellipsoid, HalfSpace, Intersect, Offset, Periodic, Prism,
                     Ribs, Shape, Subtract, Union, Wavy, rotation, tube)

ORGAN_CODES = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "ivc": 9,
    "portal_splenic_vein": 10,
    "pancreas": 11,
    "right_adrenal": 12,
    "left_adrenal": 13,
}
# The phantom's organ code of the liver (BTCV's), not a label value of the crops
# (conventions.ORGAN): layouts other than BTCV write it as their own liver value.
LIVER_CODE = ORGAN_CODES["liver"]


@dataclass(frozen=True)
class Tissues:
    """Per-case HU of every tissue class (portal-venous phase)."""

    fat_sub: float
    fat_visc: float
    muscle: float
    lung: float
    heart: float
    cortical: float
    cancellous: float
    disc: float
    csf: float
    rib: float
    aorta: float
    ivc: float
    kidney_cortex: float
    kidney_medulla: float
    sinus_fat: float
    adrenal: float
    spleen: float
    pancreas: float
    gut_wall: float
    gut_fluid: float
    bile: float
    liver: float
    portal: float
    hepatic: float

    @staticmethod
    def draw(rng: np.random.Generator) -> "Tissues":
        liver = rng.uniform(90.0, 125.0)
        cortex = rng.uniform(160.0, 200.0)
        return Tissues(
            fat_sub=rng.uniform(-115.0, -90.0),
            fat_visc=rng.uniform(-100.0, -80.0),
            muscle=rng.uniform(40.0, 60.0),
            lung=rng.uniform(-880.0, -820.0),
            heart=rng.uniform(100.0, 140.0),
            cortical=rng.uniform(600.0, 800.0),
            cancellous=rng.uniform(180.0, 300.0),
            disc=rng.uniform(70.0, 100.0),
            csf=rng.uniform(10.0, 30.0),
            rib=rng.uniform(450.0, 650.0),
            aorta=rng.uniform(150.0, 180.0),
            ivc=rng.uniform(120.0, 140.0),
            kidney_cortex=cortex,
            kidney_medulla=cortex - rng.uniform(30.0, 60.0),
            sinus_fat=rng.uniform(-90.0, -60.0),
            adrenal=rng.uniform(30.0, 50.0),
            spleen=rng.uniform(110.0, 130.0),
            pancreas=rng.uniform(90.0, 120.0),
            gut_wall=rng.uniform(50.0, 80.0),
            gut_fluid=rng.uniform(5.0, 25.0),
            bile=rng.uniform(0.0, 20.0),
            liver=liver,
            portal=liver + rng.uniform(40.0, 70.0),
            hepatic=liver + rng.uniform(40.0, 70.0),
        )


def _jitter(rng, point, mm):
    return tuple(float(v) for v in np.asarray(point, np.float64) + rng.uniform(-mm, mm, 3))


def _hollow(shape: Shape, wall_mm: float, t: Tissues, content_hu: float, gas_depth_mm: float, code: int):
    """Wall, content and a gas pocket against the anterior side (the patient lies supine,
    so the air-fluid level is a coronal plane y = const)."""
    inner = Offset(shape, -wall_mm)
    layers = [Layer(shape, t.gut_wall, code), Layer(inner, content_hu, code)]
    if gas_depth_mm > 0.0:
        level = inner.hi[1] - wall_mm - gas_depth_mm
        layers.append(Layer(Intersect([inner, HalfSpace(1, level, 1.0)]), AIR_HU, code))
    return layers


@dataclass
class Scene:
    """Canonical layers plus the handles make_phantom needs to finish the case."""

    before_liver: list[Layer]
    liver_cuts: Shape
    lobes: Shape
    liver_bounds: list[Shape]
    after_liver: list[Layer]
    hilum: tuple[float, float, float]
    confluence: tuple[float, float, float]
    hepatic_roots: list[tuple]
    body_halfwidth: float
    body_halfdepth: tuple[float, float]
    dome_z: float
    kidney_pole_z: float


def _body(rng, t: Tissues, layers: list[Layer]):
    zs = [-450.0, -250.0, -120.0, 0.0, 150.0]
    belly = rng.uniform(0.95, 1.1)
    rx = 160.0 * np.array([0.95, 0.97, 1.0, 1.0, 0.98])
    ry_ant = 110.0 * np.array([1.0 + 0.05 * belly, belly, 1.0, 0.97, 0.95])
    outline = Prism(0.0, 0.0, zs, rx, ry_ant, 140.0)
    # Flat back: the patient lies on the table.
    body = Intersect([outline, HalfSpace(1, -124.0, 1.0)], k=30.0)
    fat = rng.uniform(6.0, 24.0)
    wall = rng.uniform(8.0, 13.0)
    cavity = Offset(body, -(fat + wall))
    layers += [Layer(body, t.fat_sub), Layer(Offset(body, -fat), t.muscle), Layer(cavity, t.fat_visc)]
    return outline, cavity, fat, wall


def _chest(rng, t, layers, cavity):
    dia = Diaphragm(
        [
            (55.0, 5.0, 0.0, 95.0, 95.0, rng.uniform(55.0, 70.0)),
            (-55.0, 10.0, rng.uniform(-18.0, -6.0), 95.0, 95.0, rng.uniform(55.0, 70.0)),
        ]
    )
    above = dia.side(below=False, gap_mm=4.0)
    # The diaphragm is a ~4 mm muscle sheet: paint the whole thorax as muscle, then the lungs above it.
    heart = Ellipsoid(_jitter(rng, (-15.0, 45.0, 50.0), 6.0), (65.0, 50.0, 55.0), rotation(rz_deg=25.0))
    layers += [
        Layer(Intersect([cavity, dia.side(below=False, gap_mm=0.0)]), t.muscle),
        Layer(Intersect([cavity, above]), t.lung),
        Layer(Intersect([heart, above, cavity]), t.heart),
    ]
    return dia


def _spine(rng, t, layers, outline, fat, wall):
    zs = [-450.0, -100.0, 150.0]
    period = rng.uniform(31.0, 36.0)
    phase = rng.uniform(0.0, period)
    rx, ry = np.array([26.0, 23.0, 20.0]), np.array([20.0, 18.0, 16.0])
    for side in (1.0, -1.0):
        layers.append(Layer(Prism(36.0 * side, -84.0, zs, 28.0, 19.0), t.muscle))
        layers.append(Layer(Capsule((30.0 * side, -40.0, -90.0), (52.0 * side, -25.0, -330.0), 4.0, 27.0), t.muscle))
    vertebra = Periodic(Prism(0.0, -40.0, zs, rx, ry), period, period - 8.0, phase)
    arch = Periodic(Prism(0.0, -72.0, zs, 19.0, 15.0), period, period - 12.0, phase)
    centres = phase + 0.5 * period + period * np.arange(np.floor((-450.0 - phase) / period), 6)
    processes = []
    for zc in centres:
        processes.append(Capsule((0.0, -84.0, zc), (0.0, -104.0, zc - 10.0), 5.0, 4.0))
        for side in (1.0, -1.0):
            processes.append(Capsule((14.0 * side, -66.0, zc), (42.0 * side, -62.0, zc + 2.0), 5.0, 3.5))
    layers += [
        # Ligaments and muscle between the laminae, so disc levels show soft tissue around the canal.
        Layer(Prism(0.0, -68.0, zs, 22.0, 26.0), t.muscle),
        Layer(Prism(0.0, -40.0, zs, rx * 0.97, ry * 0.97), t.disc),
        Layer(vertebra, t.cortical),
        Layer(Offset(vertebra, -2.5), t.cancellous),
        Layer(Union([arch] + processes), 0.5 * (t.cortical + t.cancellous)),
        Layer(Prism(0.0, -70.0, zs, 10.0, 8.0), t.csf),
    ]
    pitch = rng.uniform(28.0, 34.0)
    top = rng.uniform(45.0, 60.0)
    n_ribs = 6
    ends = [(0.12 * np.pi, rng.uniform(0.8, 0.9) * np.pi) for _ in range(n_ribs - 2)]
    ends += [(0.12 * np.pi, rng.uniform(0.5, 0.6) * np.pi), (0.12 * np.pi, rng.uniform(0.38, 0.48) * np.pi)]
    ribs = Ribs(outline, fat + 0.5 * wall, top, pitch, rng.uniform(110.0, 150.0), ends)
    layers += [Layer(ribs, t.rib), Layer(Offset(ribs, -1.8), t.cancellous)]
    layers.append(Layer(Capsule((0.0, 95.0, 40.0), (0.0, 92.0, rng.uniform(-40.0, -20.0)), 8.0, 5.0), t.rib))


def _small_bowel(rng, t, layers):
    lo, hi = np.array([-60.0, 10.0, -330.0]), np.array([50.0, 70.0, -190.0])
    for _ in range(int(rng.integers(3, 6))):
        p = lo + rng.random(3) * (hi - lo)
        d = rng.normal(size=3)
        points = [tuple(p)]
        for _ in range(8):
            d = d / np.linalg.norm(d) + 0.9 * rng.normal(size=3)
            d[1] *= 0.5
            p = np.clip(p + 24.0 * d / np.linalg.norm(d), lo - 20.0, hi + 20.0)
            points.append(tuple(p))
        gas = rng.uniform(5.0, 12.0) if rng.random() < 0.35 else 0.0
        layers += _hollow(Union(tube(points, rng.uniform(10.0, 14.0))), 2.5, t, t.gut_fluid, gas, 0)


def _gut(rng, t, layers, cavity, below):
    """Colon, duodenum and stomach; returns their outer shapes (the liver is cut around them)."""
    colon_radius = rng.uniform(18.0, 23.0)
    outer = []
    # Ascending, transverse and descending colon each get their own gas level.
    for path in (
        [(88, 2, -450), (88, 4, -210), (82, 22, -168)],
        [(82, 22, -168), (40, 68, -178), (-20, 72, -172), (-70, 42, -135), (-90, 22, -118)],
        [(-90, 22, -118), (-100, -2, -175), (-98, -8, -450)],
    ):
        segment = Union(tube(path, colon_radius), k=10.0)
        layers += _hollow(segment, 3.0, t, rng.uniform(-150.0, 0.0), rng.uniform(8.0, 25.0), 0)
        outer.append(segment)
    duodenum = Union(
        tube([(30, 38, -108), (46, 30, -112), (52, 14, -126), (52, 10, -160), (30, 15, -176),
              (-5, 16, -178), (-28, 18, -165), (-42, 22, -145)], 9.5),
        k=8.0,
    )
    layers += _hollow(duodenum, 2.5, t, t.gut_fluid, rng.uniform(0.0, 8.0), 0)
    outer.append(duodenum)
    distension = rng.uniform(0.8, 1.05)
    parts = [
        Ellipsoid((-62.0, 5.0, -40.0), np.array([40.0, 38.0, 40.0]) * distension),
        Ellipsoid((-45.0, 38.0, -85.0), np.array([36.0, 28.0, 42.0]) * distension, rotation(rz_deg=-20.0)),
        Capsule((-30.0, 52.0, -108.0), (15.0, 45.0, -112.0), 20.0 * distension, 16.0),
        Capsule((15.0, 45.0, -112.0), (30.0, 38.0, -108.0), 16.0, 10.0),
    ]
    stomach = Intersect([Union(parts, k=20.0), Offset(cavity, -2.0), below], k=4.0)
    layers += _hollow(stomach, 4.0, t, t.gut_fluid, rng.uniform(8.0, 30.0), ORGAN_CODES["stomach"])
    outer.append(stomach)
    return outer


def _spleen(rng, t, layers, cavity, below):
    body = Ellipsoid(_jitter(rng, (-92.0, -28.0, -60.0), 5.0), np.array([29.0, 64.0, 55.0]) * rng.uniform(0.85, 1.15),
                     rotation(rx_deg=-20.0, rz_deg=27.0))
    # Concave visceral surface facing the stomach and the left kidney.
    crescent = Subtract(body, Ellipsoid((-52.0, 5.0, -60.0), (38.0, 45.0, 60.0)), k=12.0)
    layers.append(Layer(Intersect([crescent, Offset(cavity, -1.0), below], k=6.0), t.spleen, ORGAN_CODES["spleen"]))


def _kidneys(rng, t, layers):
    """Kidneys (cortex, medullary pyramids, sinus fat) and adrenals; returns
    {side: (outer shape, hilum point, centre)} and the right adrenal."""
    kidneys = {}
    for name, side, centre in (("right", 1.0, (72.0, -32.0, -140.0)), ("left", -1.0, (-70.0, -32.0, -125.0))):
        code = ORGAN_CODES[f"{name}_kidney"]
        # Upper pole tilted medially and backward, hilum turned anteromedially.
        rot = rotation(rx_deg=12.0, ry_deg=-12.0 * side, rz_deg=-30.0 * side)
        c = np.asarray(_jitter(rng, centre, 5.0))
        medial = -side

        def at(lx, ly, lz, c=c, rot=rot):
            return tuple(c + rot @ np.array([lx, ly, lz]))

        radii = np.array([27.0, 23.0, 55.0]) * rng.uniform(0.9, 1.1)
        outer = Subtract(Ellipsoid(c, radii, rot), Ellipsoid(at(medial * 26.0, 0, 0), (10.0, 11.0, 22.0), rot), k=6.0)
        pyramids = [
            Ellipsoid(at(medial * -6.0, 8.0 * (-1) ** i, lz), (8.0, 7.0, 9.0), rot)
            for i, lz in enumerate((-36.0, -22.0, -8.0, 8.0, 22.0, 36.0))
        ]
        layers += [
            Layer(outer, t.kidney_cortex, code),
            Layer(Union(pyramids), t.kidney_medulla, code),
            Layer(Ellipsoid(at(medial * 9.0, 0, 0), (9.0, 9.0, 28.0), rot), t.sinus_fat, code),
        ]
        kidneys[name] = (outer, at(medial * 27.0, 0, 0), tuple(c))
    adrenals = {}
    for name, centre, rz in (("right_adrenal", (38.0, -20.0, -82.0), -35.0), ("left_adrenal", (-36.0, -18.0, -92.0), 35.0)):
        adrenals[name] = Ellipsoid(_jitter(rng, centre, 3.0), (3.0, 13.0, 17.0), rotation(rz_deg=rz))
        layers.append(Layer(adrenals[name], t.adrenal, ORGAN_CODES[name]))
    return kidneys, adrenals["right_adrenal"]


def _great_vessels(rng, t, layers, kidneys):
    """Aorta with its branches, renal vessels, esophagus; returns (aorta, ivc) shapes (the IVC is painted
    after the liver because it runs through the liver's bare area)."""
    aorta = Union(tube([(-22, -26, 150), (-16, -12, -20), (-14, -6, -80), (-16, -8, -160), (-20, -10, -260),
                        (-22, -12, -450)], [12.0, 11.5, 11.0, 10.5, 9.5, 9.0]))
    ivc = Union(tube([(24, -2, -450), (24, -2, -130), (24, -6, -60), (20, -2, -10), (12, 8, 40)],
                     [11.0, 12.0, 13.0, 13.0, 13.0]))
    r_hilum, l_hilum = kidneys["right"][1], kidneys["left"][1]
    celiac = tube([(-14, -2, -72), (-10, 14, -76)], 4.0)
    hepatic_artery = tube([(-10, 14, -76), (10, 18, -80), (32, 12, -82)], 2.8)
    splenic_artery = tube([(-10, 14, -76), (-35, 5, -72), (-70, -12, -70)], 3.0)
    sma = tube([(-14, -2, -98), (-10, 18, -112), (-8, 30, -160), (-6, 36, -450)], 4.0)
    layers += [
        Layer(Union(tube([r_hilum, (24.0, -4.0, r_hilum[2] + 8.0)], 5.0)), t.ivc),
        # The left renal vein crosses in front of the aorta, under the SMA.
        Layer(Union(tube([l_hilum, (-14.0, 9.0, l_hilum[2] + 6.0), (24.0, -2.0, l_hilum[2] + 8.0)], 5.0)), t.ivc),
        Layer(Union(tube([(-14.0, -8.0, -122.0), (24.0, -17.0, -128.0), r_hilum], 3.0)
                    + tube([(-14.0, -8.0, -122.0), l_hilum], 3.0)), t.aorta),
        Layer(aorta, t.aorta, ORGAN_CODES["aorta"]),
        Layer(Union(celiac + hepatic_artery + splenic_artery + sma), t.aorta),
        Layer(Union(tube([(-8, -15, 150), (-14, 5, 0), (-35, 20, -30), (-50, 20, -42)], 8.0)),
              rng.uniform(35.0, 55.0), ORGAN_CODES["esophagus"]),
    ]
    return aorta, ivc


def _pancreas(rng, t, layers, confluence):
    radii = np.array([17.0, 12.0, 11.0, 9.0]) * rng.uniform(0.85, 1.15)
    lobulation = [(*(rng.normal(size=3) * 2 * np.pi / 25.0), rng.uniform(0, 2 * np.pi), 2.0) for _ in range(3)]
    pancreas = Wavy(Union(tube([(24, 24, -122), (6, 32, -106), (-26, 24, -96), (-68, 0, -82)], radii), k=10.0),
                    lobulation)
    layers.append(Layer(pancreas, t.pancreas, ORGAN_CODES["pancreas"]))
    splenic_vein = tube([confluence, (-28, 8, -97), (-55, -5, -85), (-72, -15, -75)], [5.5, 5.0, 4.5, 4.0])
    smv = tube([confluence, (10, 32, -160), (12, 40, -450)], 6.0)
    layers.append(Layer(Union(splenic_vein + smv), t.portal, ORGAN_CODES["portal_splenic_vein"]))
    return pancreas


def _liver_lobes(rng) -> Shape:
    """Right lobe (tilted so its inferior tip, segment 6, points down and laterally), its inferior
    extension, the medial segment, the left lateral lobe and the caudate lobe."""
    parts = [
        Ellipsoid(_jitter(rng, (66.0, 0.0, -72.0), 5.0), np.array([64.0, 86.0, 80.0]) * rng.uniform(0.92, 1.08, 3),
                  rotation(ry_deg=rng.uniform(-20.0, -5.0))),
        Ellipsoid(_jitter(rng, (88.0, -10.0, -125.0), 8.0), np.array([40.0, 54.0, 38.0]) * rng.uniform(0.85, 1.15, 3)),
        Ellipsoid(_jitter(rng, (25.0, 40.0, -72.0), 5.0), np.array([42.0, 36.0, 42.0]) * rng.uniform(0.9, 1.1, 3)),
        Ellipsoid(_jitter(rng, (-25.0, 45.0, -48.0), 8.0), np.array([68.0, 32.0, 32.0]) * rng.uniform(0.85, 1.15, 3),
                  rotation(ry_deg=rng.uniform(-10.0, 10.0), rz_deg=-20.0)),
        Ellipsoid(_jitter(rng, (8.0, 8.0, -60.0), 4.0), (18.0, 16.0, 30.0)),
    ]
    return Union(parts, k=20.0)


def make_scene(rng: np.random.Generator, t: Tissues) -> Scene:
    """Build the canonical patient: every layer except the liver, its vessel tree and lesions,
    whose size and shape make_phantom settles."""
    layers: list[Layer] = []
    outline, cavity, fat, wall = _body(rng, t, layers)
    dia = _chest(rng, t, layers, cavity)
    below = dia.side(below=True, gap_mm=0.5)
    _spine(rng, t, layers, outline, fat, wall)
    _small_bowel(rng, t, layers)
    gut = _gut(rng, t, layers, cavity, below)
    _spleen(rng, t, layers, cavity, below)
    kidneys, right_adrenal = _kidneys(rng, t, layers)
    aorta, ivc = _great_vessels(rng, t, layers, kidneys)
    confluence = (8.0, 18.0, -108.0)
    pancreas = _pancreas(rng, t, layers, confluence)

    gallbladder = Capsule(_jitter(rng, (35.0, 22.0, -92.0), 4.0), _jitter(rng, (46.0, 58.0, -135.0), 8.0), 8.0,
                          rng.uniform(12.0, 18.0))
    after = _hollow(gallbladder, 2.0, t, t.bile, 0.0, ORGAN_CODES["gallbladder"])
    after.append(Layer(ivc, t.ivc, ORGAN_CODES["ivc"]))

    # The liver is carved around its neighbours instead of being painted over
    # them, so its label volume is exactly the fitted volume.
    right_kidney, _, right_kidney_centre = kidneys["right"]
    cuts = Union(
        [
            Offset(gallbladder, 1.0),
            Offset(ivc, 1.5),
            Offset(right_kidney, 3.0),
            # The right kidney lies against the posterior wall: no liver behind it.
            Capsule(right_kidney_centre, np.add(right_kidney_centre, (5.0, -70.0, 10.0)), 26.0),
            Offset(right_adrenal, 3.0),
            Offset(aorta, 3.0),
            Prism(0.0, -40.0, [-450.0, 150.0], 32.0, 28.0),
            Offset(pancreas, 3.0),
            *(Offset(shape, 3.0) for shape in gut),
        ]
    )
    return Scene(
        before_liver=layers,
        liver_cuts=cuts,
        lobes=_liver_lobes(rng),
        # The floor keeps even a large liver above the kidneys' lower poles, inside every scan's coverage.
        liver_bounds=[Offset(cavity, -1.0), below, HalfSpace(2, -198.0, 1.0)],
        after_liver=after,
        hilum=(36.0, 10.0, -82.0),
        confluence=confluence,
        hepatic_roots=[
            ((28.0, -2.0, -16.0), (95.0, 0.0, -70.0), 6.5),
            ((20.0, 8.0, -12.0), (45.0, 55.0, -90.0), 6.0),
            ((12.0, 8.0, -10.0), (-30.0, 45.0, -45.0), 5.5),
        ],
        body_halfwidth=160.0,
        body_halfdepth=(110.0, 124.0),
        dome_z=0.0,
        kidney_pole_z=-195.0,
    )
