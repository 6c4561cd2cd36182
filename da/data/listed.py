"""Named image datasets read from their official on-disk layouts and image lists, each with a manifest.

- ``office_home``: Office-Home (Venkateswara et al., CVPR 2017), Art / Clipart / Product / Real_World, 65 classes;
  ``<data_root>/office_home/<Domain>/<class>/*.jpg`` (the extracted ``OfficeHomeDataset_10072016.zip``). Transductive
  protocol (as Office-31): every image of the source labelled, every target image unlabelled and reported.
- ``visda2017``: VisDA-2017 classification (Peng et al., arXiv 1710.06924), synthetic (``train/``, 152,397 renders)
  -> real (``validation/``, 55,388 COCO crops), 12 classes; ``<data_root>/visda2017/{train,validation}/
  image_list.txt`` ("<class>/<file> <label>"). The headline metric is the mean per-class accuracy.
- ``domainnet``: DomainNet (Peng et al., ICCV 2019), cleaned version, ``variant=345`` (the official
  ``<domain>_{train,test}.txt`` lists: train on the source's train list and the target's train list, report on
  the target's test list) or ``variant=126`` (Saito et al.'s 126-class lists from SSDA_MME,
  ``labeled_source_images_<domain>.txt``, clipart / painting / real / sketch; transductive on the whole list);
  ``<data_root>/domainnet/<domain>/<class>/*.jpg`` and the lists beside them.
- ``mnist_m``: MNIST-M (Ganin et al., arXiv 1505.07818); ``<data_root>/mnist_m/mnist_m_{train,test}/*.png`` and
  ``mnist_m_{train,test}_labels.txt`` ("<file> <label>"); 59,001 / 9,001 images.

Every dataset checks its lists against the manifest's image counts (``dataset.verify=false`` skips it) and that
every listed image is there. Missing files are extracted from an archive lying in the dataset's folder (its md5
checked when the manifest has one), else downloaded (``dataset.download``) where a stable source exists; otherwise
one line names the files and the folder they go in. Images go through the decoded-image cache
(:mod:`da.data.cache`).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field

from da.data.base import LabelledTensors, Task, transductive_task
from da.data.folder import cache_options, check_cache, check_sizes, unfingerprinted
from da.data.images import IMAGENET_MEAN, IMAGENET_STD, decode_paths, image_files, train_and_eval
from da.errors import ConfigError, DataError, one_line


@dataclass(frozen=True)
class Archive:
    file: str  # the archive's name in the dataset's folder
    url: str | None  # a stable source, or None (then one line says where to get it)
    md5: str | None  # None: no checksum published (not checked)


@dataclass(frozen=True)
class Manifest:
    """What a dataset is on disk: its folder under data_root, domains, archives, lists and image counts."""

    folder: str
    homepage: str
    domains: tuple[str, ...]
    classes: int
    archives: dict[str, tuple[Archive, ...]]  # domain -> archives providing its images and lists
    counts: dict[str, int] = field(default_factory=dict)  # "<domain>/<split>" -> images (the official lists)
    metric: str = "accuracy"  # accuracy | mean_class_accuracy (the headline; per-class accuracy always reported)


TSINGHUA = "https://cloud.tsinghua.edu.cn/f/"  # TLlib's mirrors (thuml/Transfer-Learning-Library)
OFFICE_HOME = Manifest(
    folder="office_home",
    homepage="https://www.hemanthdv.org/officeHomeDataset.html",
    domains=("Art", "Clipart", "Product", "Real_World"),
    classes=65,
    archives={
        "Art": (Archive("Art.tgz", TSINGHUA + "81a4f30c7e894298b435/?dl=1", None),),
        "Clipart": (Archive("Clipart.tgz", TSINGHUA + "d4ad15137c734917aa5c/?dl=1", None),),
        "Product": (Archive("Product.tgz", TSINGHUA + "a6b643999c574184bbcd/?dl=1", None),),
        "Real_World": (Archive("Real_World.tgz", TSINGHUA + "60ca8452bcf743408245/?dl=1", None),),
    },
    counts={"Art/all": 2427, "Clipart/all": 4365, "Product/all": 4439, "Real_World/all": 4357},  # 15,588
)
VISDA_URL = "http://csr.bu.edu/ftp/visda17/clf/"  # VisionLearningGroup/taskcv-2017-public, classification
VISDA2017 = Manifest(
    folder="visda2017",
    homepage="http://ai.bu.edu/visda-2017/",
    domains=("synthetic", "real"),
    classes=12,
    archives={
        "synthetic": (Archive("train.tar", VISDA_URL + "train.tar", None),),
        "real": (Archive("validation.tar", VISDA_URL + "validation.tar", None),),
    },
    counts={"synthetic/all": 152_397, "real/all": 55_388},
    metric="mean_class_accuracy",
)
DOMAINNET_URL = "http://csr.bu.edu/ftp/visda/2019/multi-source/"  # ai.bu.edu/M3SDA, the cleaned version
DOMAINNET_ZIPS = {
    "clipart": "groundtruth/clipart.zip",
    "infograph": "infograph.zip",
    "painting": "groundtruth/painting.zip",
    "quickdraw": "quickdraw.zip",
    "real": "real.zip",
    "sketch": "sketch.zip",
}
MME_LISTS = "https://raw.githubusercontent.com/VisionLearningGroup/SSDA_MME/master/data/txt/multi/"
DOMAINNET = Manifest(
    folder="domainnet",
    homepage="http://ai.bu.edu/M3SDA/",
    domains=tuple(DOMAINNET_ZIPS),
    classes=345,
    archives={
        d: (
            Archive(f"{d}.zip", DOMAINNET_URL + z, None),
            Archive(f"{d}_train.txt", f"{DOMAINNET_URL}domainnet/txt/{d}_train.txt", None),
            Archive(f"{d}_test.txt", f"{DOMAINNET_URL}domainnet/txt/{d}_test.txt", None),
        )
        for d, z in DOMAINNET_ZIPS.items()
    },
    counts={  # the cleaned lists: 586,575 images
        "clipart/train": 33_525,
        "clipart/test": 14_604,
        "infograph/train": 36_023,
        "infograph/test": 15_582,
        "painting/train": 50_416,
        "painting/test": 21_850,
        "quickdraw/train": 120_750,
        "quickdraw/test": 51_750,
        "real/train": 120_906,
        "real/test": 52_041,
        "sketch/train": 48_212,
        "sketch/test": 20_916,
    },
)
DOMAINNET126 = Manifest(
    folder="domainnet",
    homepage="https://github.com/VisionLearningGroup/SSDA_MME",
    domains=("clipart", "painting", "real", "sketch"),
    classes=126,
    archives={
        d: (
            Archive(f"{d}.zip", DOMAINNET_URL + DOMAINNET_ZIPS[d], None),
            Archive(f"labeled_source_images_{d}.txt", f"{MME_LISTS}labeled_source_images_{d}.txt", None),
        )
        for d in ("clipart", "painting", "real", "sketch")
    },
    counts={},  # not checked: no published count could be verified offline
)
MNIST_M = Manifest(
    folder="mnist_m",
    homepage="http://yaroslav.ganin.net/",
    domains=("mnist_m",),
    classes=10,
    archives={  # the mirror pytorch-adapt downloads (KevinMusgrave/pytorch-adapt, datasets/mnistm.py)
        "mnist_m": (
            Archive(
                "mnist_m.tar.gz",
                "https://cornell.box.com/shared/static/jado7quprg6hzzdubvwzh9umr75damwi",
                "859df31c91afe82e80e5012ba928f279",
            ),
        )
    },
    counts={"mnist_m/train": 59_001, "mnist_m/test": 9_001},
)


@dataclass
class ImageListConfig:
    """Keys shared by the named image datasets."""

    name: str = ""
    source: str = ""
    target: str = ""
    resize: int = 256  # decoded once to resize x resize (uint8; the decoded-image cache, dataset.cache)
    crop: int = 224  # random crop + flip for training, centre crop for evaluation; ImageNet normalisation
    download: bool = True  # fetch missing archives where a stable source exists
    verify: bool = True  # check the lists' image counts against the manifest
    cache: str = unfingerprinted("auto")  # decoded images in <data_root>/.da-cache: auto, true, false
    memory_budget_gb: float | None = unfingerprinted(None)  # above it batches are read from the cache on disk

    def check(self, domains: tuple[str, ...]) -> None:
        for key in ("source", "target"):
            if getattr(self, key) not in domains:
                raise ConfigError(
                    f"dataset.{key} for {self.name} must be one of {', '.join(domains)}, got {getattr(self, key)!r}"
                )
        check_sizes(self.resize, self.crop)
        self.cache = check_cache(self.cache)


@dataclass
class OfficeHomeConfig(ImageListConfig):
    name: str = "office_home"
    source: str = "Art"  # Art | Clipart | Product | Real_World
    target: str = "Clipart"

    def __post_init__(self) -> None:
        self.check(OFFICE_HOME.domains)


@dataclass
class VisDA2017Config(ImageListConfig):
    name: str = "visda2017"
    source: str = "synthetic"  # the renders (train/)
    target: str = "real"  # the COCO crops (validation/)

    def __post_init__(self) -> None:
        self.check(VISDA2017.domains)


@dataclass
class DomainNetConfig(ImageListConfig):
    name: str = "domainnet"
    variant: int = 126  # 126 (Saito et al.'s lists, 4 domains) | 345 (the official train/test lists)
    source: str = "real"  # clipart | infograph | painting | quickdraw | real | sketch (126: not infograph, quickdraw)
    target: str = "clipart"

    def __post_init__(self) -> None:
        if self.variant not in (126, 345):
            raise ConfigError(f"dataset.variant for domainnet must be 126 or 345, got {self.variant!r}")
        self.check((DOMAINNET126 if self.variant == 126 else DOMAINNET).domains)


@dataclass
class MnistMConfig(ImageListConfig):
    name: str = "mnist_m"
    source: str = "mnist_m"  # one domain: train on its train list, report on its test list (reference runs)
    target: str = "mnist_m"
    resize: int = 32
    crop: int = 32

    def __post_init__(self) -> None:
        self.check(MNIST_M.domains)


# ------------------------------------------------------------------------------------------ files and archives
def md5_of(path: str) -> str:
    import hashlib

    digest = hashlib.md5()  # noqa: S324 (a checksum, not security)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def where(manifest: Manifest, base: str, domains: list[str]) -> str:
    archives = [a for d in domains for a in manifest.archives[d]]
    named = ", ".join(f"{a.file}{f' (md5 {a.md5})' if a.md5 else ''}" for a in archives)
    return f"put {named} (from {manifest.homepage}) in {base}/ (extracted on the next run), or extract them there"


def extract(archive: str, base: str) -> None:
    """Extract a .tar[.gz]/.tgz/.zip into a temporary folder in ``base`` and move its entries into place (never
    outside ``base``; a kill leaves only the temporary folder, removed by the next extraction)."""
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=base)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = os.path.realpath(os.path.join(tmp, member))
                    if not target.startswith(os.path.realpath(tmp) + os.sep):
                        raise DataError(f"{archive}: member {member!r} would land outside {base}")
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)  # noqa: S202
        entries = os.listdir(tmp)
        top = os.path.join(tmp, entries[0]) if len(entries) == 1 else None
        nested = top is not None and os.path.isdir(top) and entries[0] == os.path.basename(os.path.normpath(base))
        _merge(top if nested else tmp, base)  # an archive of "<dataset folder>/..." lands in that folder, not below
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"cannot extract {archive} ({one_line(err)}): delete it and download it again") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(src: str, dest: str) -> None:
    for entry in os.listdir(src):
        s, d = os.path.join(src, entry), os.path.join(dest, entry)
        if os.path.isdir(s) and os.path.isdir(d):
            _merge(s, d)
        else:
            os.replace(s, d)


def fetch(manifest: Manifest, base: str, domains: list[str], download: bool, missing: str) -> None:
    """Extract (or first download) every archive of ``domains``; one line when that cannot be done."""
    from da.data.cache import file_lock

    os.makedirs(base, exist_ok=True)
    with file_lock(os.path.join(base, ".extract.lock")):
        for archive in [a for d in domains for a in manifest.archives[d]]:
            path = os.path.join(base, archive.file)
            if not os.path.isfile(path):
                if not download or not archive.url:
                    why = "dataset.download is off" if not download else "it has no stable download"
                    raise DataError(f"{missing}; {why}: {where(manifest, base, domains)}")
                try:
                    from torchvision.datasets.utils import download_url

                    download_url(archive.url, base, archive.file, md5=archive.md5)
                except Exception as err:  # no network, a dead link, a bad checksum
                    if os.path.isfile(path):
                        os.remove(path)  # never leave a partial archive behind
                    reason = one_line(err)[:160]
                    raise DataError(
                        f"{missing}; the download failed ({reason}): {where(manifest, base, domains)}"
                    ) from err
            if archive.md5 and md5_of(path) != archive.md5:
                raise DataError(
                    f"{path} does not match md5 {archive.md5} (a partial or different download): delete it and "
                    "download it again"
                )
            if archive.file.endswith((".tar", ".tar.gz", ".tgz", ".zip")):
                extract(path, base)


def read_list(path: str, root: str) -> tuple[list[str], list[int]]:
    """``(paths, labels)`` of an image list of "<relative path> <label>" lines (paths relative to ``root``)."""
    paths, labels = [], []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rel, _, label = line.strip().rpartition(" ")
            if not rel or not label.lstrip("-").isdigit():
                raise DataError(f"{path} line {n}: expected '<image path> <label>', got {line.strip()[:80]!r}")
            paths.append(os.path.join(root, rel))
            labels.append(int(label))
    return paths, labels


def check_split(manifest: Manifest, key: str, paths: list[str], source: str, verify: bool) -> None:
    """The list's image count against the manifest; every listed image present."""
    want = manifest.counts.get(key)
    if verify and want is not None and len(paths) != want:
        raise DataError(
            f"{source} lists {len(paths):,} images, the official {key} split {want:,}: a partial or different list; "
            "replace it with the official one (or set dataset.verify=false to use it as it is)"
        )
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        raise DataError(
            f"{len(absent):,} of the {len(paths):,} images {source} lists are missing, e.g. {absent[0]}: an "
            "incomplete extraction? delete the folder and extract the archive again"
        )


# ------------------------------------------------------------------------------------------ the splits
@dataclass
class Split:
    paths: list[str]
    labels: list[int]
    source: str  # the list (or folder) the split comes from, for messages


def office_home_split(base: str, domain: str) -> Split:
    folder = os.path.join(base, domain)
    if not os.path.isdir(folder):
        nested = os.path.join(base, "OfficeHomeDataset_10072016", domain)
        folder = nested if os.path.isdir(nested) else folder
    if not os.path.isdir(folder):
        raise FileNotFoundError(folder)
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    paths = [p for c in classes for p in image_files(os.path.join(folder, c))]
    labels = [k for k, c in enumerate(classes) for _ in image_files(os.path.join(folder, c))]
    return Split(paths, labels, folder)


def list_split(base: str, list_file: str, root: str) -> Split:
    path = os.path.join(base, list_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    paths, labels = read_list(path, os.path.join(base, root))
    return Split(paths, labels, path)


def splits_of(name: str, cfg: ImageListConfig, base: str, domain: str) -> dict[str, Split]:
    """{"train": ..., "test": ...} of ``domain`` (the same split twice for a transductive whole-domain list)."""
    if name == "office_home":
        whole = office_home_split(base, domain)
        return {"all": whole}
    if name == "visda2017":
        folder = "train" if domain == "synthetic" else "validation"
        return {"all": list_split(base, f"{folder}/image_list.txt", folder)}
    if name == "domainnet" and getattr(cfg, "variant", 345) == 126:
        return {"all": list_split(base, f"labeled_source_images_{domain}.txt", "")}
    if name == "domainnet":
        return {s: list_split(base, f"{domain}_{s}.txt", "") for s in ("train", "test")}
    return {s: list_split(base, f"mnist_m_{s}_labels.txt", f"mnist_m_{s}") for s in ("train", "test")}


MANIFESTS = {"office_home": OFFICE_HOME, "visda2017": VISDA2017, "mnist_m": MNIST_M}


def manifest_of(cfg: ImageListConfig) -> Manifest:
    if cfg.name == "domainnet":
        return DOMAINNET126 if getattr(cfg, "variant", 345) == 126 else DOMAINNET
    return MANIFESTS[cfg.name]


def domain_splits(cfg: ImageListConfig, base: str, domain: str) -> dict[str, Split]:
    manifest = manifest_of(cfg)
    try:
        splits = splits_of(cfg.name, cfg, base, domain)
    except FileNotFoundError as err:
        fetch(manifest, base, [domain], cfg.download, f"{cfg.name} domain {domain} not found ({err.args[0]})")
        try:
            splits = splits_of(cfg.name, cfg, base, domain)
        except FileNotFoundError as again:
            raise DataError(
                f"{cfg.name} domain {domain}: {again.args[0]} still missing after extracting the archives: "
                f"{where(manifest, base, [domain])}"
            ) from again
    for split, s in splits.items():
        check_split(manifest, f"{domain}/{split}", s.paths, s.source, cfg.verify)
    return splits


def class_names(default: list[str], splits: list[Split]) -> list[str]:
    """Each label's name: the folder its images sit in (``<class>/<file>`` layouts), when that is one name per
    label; else ``default`` (MNIST-M's flat folders: the digits)."""
    seen: dict[int, set[str]] = {}
    for s in splits:
        for path, label in zip(s.paths, s.labels, strict=True):
            seen.setdefault(label, set()).add(os.path.basename(os.path.dirname(path)))
    if any(len(v) != 1 for v in seen.values()) or len({next(iter(v)) for v in seen.values()}) != len(seen):
        return default
    return [next(iter(seen[k])) if k in seen else default[k] for k in range(len(default))]


def build_listed(cfg: ImageListConfig, seed: int, data_root: str) -> Task:
    """The task of a named image dataset: the source's train split labelled, the target's train split unlabelled,
    accuracy on the target's test split (the same images for a whole-domain list: the transductive protocol)."""
    manifest = manifest_of(cfg)
    base = os.path.join(os.path.expanduser(data_root), manifest.folder)
    cache = cache_options(cfg, data_root)
    names = [str(k) for k in range(manifest.classes)]
    decoded: dict[tuple[str, str], object] = {}
    domain_splits_seen: dict[str, list[Split]] = {}
    for domain in dict.fromkeys((cfg.source, cfg.target)):
        for split, s in domain_splits(cfg, base, domain).items():
            domain_splits_seen.setdefault(domain, []).append(s)
            bad = [y for y in s.labels if not 0 <= y < manifest.classes]
            if bad:
                raise DataError(f"{s.source}: label {bad[0]} outside 0..{manifest.classes - 1}")
            what = f"{cfg.name} {domain} {split}"
            decoded[(domain, split)] = decode_paths(s.paths, s.labels, names, cfg.resize, what, cache)
    names = class_names(names, [s for d in dict.fromkeys((cfg.source, cfg.target)) for s in domain_splits_seen[d]])

    def views(domain: str) -> tuple[LabelledTensors, LabelledTensors, LabelledTensors]:
        train = decoded.get((domain, "train")) or decoded[(domain, "all")]
        test = decoded.get((domain, "test")) or decoded[(domain, "all")]
        train_aug, train_eval = train_and_eval(train, cfg.crop)  # type: ignore[arg-type]
        return train_aug, train_eval, train_and_eval(test, cfg.crop)[1]  # type: ignore[arg-type]

    s_train, _, s_test = views(cfg.source)
    t_train, t_train_eval, t_test = views(cfg.target)
    if t_train.x is t_test.x:
        t_test = t_train_eval  # one forward serves the target's accuracy and its validators
    skipped = [p for d in decoded.values() for p in d.skipped]  # type: ignore[attr-defined]
    return transductive_task(
        cfg.name,
        cfg.source,
        cfg.target,
        (s_train, s_test),
        (t_train, t_test),
        names,
        3,
        cfg.crop,
        skipped_files=len(skipped),
        skipped=skipped,
        notes={"normalization": (IMAGENET_MEAN, IMAGENET_STD), "metric": manifest.metric},
        target_train_eval=t_train_eval,
    )
