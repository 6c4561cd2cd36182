"""``dataset=office31``: Office-31 (Saenko et al., ECCV 2010), amazon / dslr / webcam, 31 office object classes.

Layout: ``<data_root>/office31/<domain>/images/<class>/*.jpg`` (the extracted ``domain_adaptation_images.tar.gz``;
``<domain>/<class>/*.jpg`` is accepted too). Protocol: the standard transductive one (Ganin et al.
arXiv 1409.7495; Long et al. arXiv 1705.10667): all source images labelled and all target images unlabelled for
training, accuracy reported on all target images. Images are resized to 256x256 once and held as uint8 tensors;
training takes a random 224 crop and a horizontal flip, evaluation the centre 224 crop; ImageNet normalisation.

When the domains are missing, the archive is extracted if it lies in ``<data_root>/office31/``, else downloaded
from ``dataset.url`` (checked against ``dataset.md5``) when ``dataset.download`` is true; otherwise, or when
that fails, one error line says what to download and where to put it.

An extraction is never used half done: the archive goes into a temporary folder next to the domains, which is
renamed into place once complete, and ``.extracted.json`` then records each domain's image count. A domain
with fewer images than recorded, or (no record yet) fewer than the archive beside it holds — what a kill during
an extraction of earlier versions left — is extracted again; without the archive, it is one error line. One
extraction at a time: parallel jobs on a fresh machine wait for the first (``.extract.lock``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from da.data.base import Task
from da.data.folder import (
    FolderConfig,
    cache_options,
    check_cache,
    check_sizes,
    one_domain_task,
    two_domain_task,
    unfingerprinted,
)
from da.data.images import IMAGE_EXTENSIONS, image_files, subfolders
from da.errors import ConfigError, DataError, one_line
from da.runfolder import read_json, write_json

log = logging.getLogger(__name__)

DOMAINS = ("amazon", "dslr", "webcam")
ARCHIVE = "domain_adaptation_images.tar.gz"
HOMEPAGE = "https://faculty.cc.gatech.edu/~judy/domainadapt/"
# images per domain in the authors' archive (4,110 in all, 31 classes each; Saenko et al. 2010)
OFFICIAL_COUNTS = {"amazon": 2817, "dslr": 498, "webcam": 795}
MARKER = ".extracted.json"  # {"counts": {domain: images}}, written once an extraction is complete
TMP_PREFIX = ".extract-"


@dataclass
class Office31Config:
    name: str = "office31"
    source: str = "amazon"  # amazon | dslr | webcam
    target: str = "webcam"
    resize: int = 256  # decoded once to 256x256 uint8 and held in memory
    # random crop + horizontal flip for training, centre crop for evaluation; ImageNet normalisation
    crop: int = 224
    # when the images are missing: extract <data_root>/office31/domain_adaptation_images.tar.gz, else download it
    # from url (checked against md5)
    download: bool = True
    # the authors' Google Drive file (needs gdown); it could not be verified from an offline machine: when it
    # fails, one line says what to put where
    url: str | None = "https://drive.google.com/uc?id=0B4IapRTv9pJ1WGZVd1VDMmhwdlE"
    md5: str | None = "1b536d114869a5a8aa4580b89e9758fb"  # as DeepMind's dm_nevis lists it; null skips the check
    # decoded images cached in <data_root>/.da-cache and shared by runs: auto (sets of 256 MiB or more), true, false
    cache: str = unfingerprinted("auto")
    # a cached set larger than this (GiB) stays on disk and batches are read from it; null: half the memory
    memory_budget_gb: float | None = unfingerprinted(None)

    def __post_init__(self) -> None:
        for key in ("source", "target"):
            if getattr(self, key) not in DOMAINS:
                raise ConfigError(
                    f"dataset.{key} for office31 must be one of {', '.join(DOMAINS)}, got {getattr(self, key)!r}"
                )
        check_sizes(self.resize, self.crop)
        self.cache = check_cache(self.cache)


def domain_dir(base: str, domain: str) -> str | None:
    """The ``<class>/*.jpg`` folder of ``domain`` under ``base``, in any of the layouts the archive comes in."""
    for candidate in (
        os.path.join(base, domain, "images"),
        os.path.join(base, domain),
        os.path.join(base, "domain_adaptation_images", domain, "images"),
    ):
        if os.path.isdir(candidate) and subfolders(candidate) not in ([], ["images"]):
            return candidate
    return None


def extract(archive: str, base: str, md5: str | None) -> None:
    """Check the archive's md5 (torchvision's ``check_integrity``), extract it into a temporary folder in
    ``base``, rename its entries into place and record each domain's image count in ``base/.extracted.json``.
    The extraction stays on ``tarfile`` with its "data" filter: torchvision's ``extract_archive`` (0.29)
    extracts every member as is, so a crafted archive could write outside ``base``."""
    from torchvision.datasets.utils import check_integrity

    if md5 and not check_integrity(archive, md5):
        raise DataError(
            f"{archive} does not match md5 {md5} (a partial or different download): delete it and download it "
            "again, or set dataset.md5=null to skip the check"
        )
    for stale in glob.glob(os.path.join(base, f"{TMP_PREFIX}*")):  # left by an extraction that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=base)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # refuses absolute paths and links out of tmp
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(tmp)  # noqa: S202
        counts = {d: len(image_files(found)) for d in DOMAINS if (found := domain_dir(tmp, d))}
        for entry in sorted(os.listdir(tmp)):  # complete: replace what an interrupted extraction left
            dest = os.path.join(base, entry)
            if os.path.isdir(dest) and not os.path.islink(dest):
                shutil.rmtree(dest)
            elif os.path.lexists(dest):
                os.remove(dest)
            os.replace(os.path.join(tmp, entry), dest)
        write_json(os.path.join(base, MARKER), {"archive": ARCHIVE, "counts": counts})
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot extract {archive}: {one_line(err)}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def archive_counts(archive: str) -> dict[str, int]:
    """Image files per domain among the archive's members (as :func:`domain_dir` and ``image_files`` count)."""
    counts: dict[str, int] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if parts and parts[0] == "domain_adaptation_images":
                    parts = parts[1:]
                hidden = any(p.startswith(".") for p in parts)
                if member.isfile() and len(parts) > 1 and parts[0] in DOMAINS and not hidden:
                    if parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                        counts[parts[0]] = counts.get(parts[0], 0) + 1
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read {archive}: {one_line(err)}; delete it and download it again") from err
    return counts


def expected_counts(base: str) -> dict[str, int] | None:
    """Images per domain a complete extraction holds: recorded in ``.extracted.json``, else counted in the archive
    beside the domains (an extraction of an earlier version, or by hand); None for a tree without either."""
    recorded = (read_json(os.path.join(base, MARKER)) or {}).get("counts")
    if isinstance(recorded, dict):
        return {str(d): int(n) for d, n in recorded.items()}
    if os.path.isfile(os.path.join(base, ARCHIVE)) and any(domain_dir(base, d) for d in DOMAINS):
        return archive_counts(os.path.join(base, ARCHIVE))
    return None


def incomplete(base: str, domain: str, expected: dict[str, int] | None) -> str | None:
    """Why ``domain`` under ``base`` cannot be used as it is ("missing", or fewer images than ``expected``), or
    None."""
    found = domain_dir(base, domain)
    if found is None:
        return "missing"
    have = len(image_files(found))
    if expected is None:  # a tree the user put there: nothing to compare with but the published counts
        if len(subfolders(found)) == 31 and have < OFFICIAL_COUNTS[domain]:
            log.warning(
                "office31: %s holds %d %s images, the published dataset %d: a partial copy?",
                found,
                have,
                domain,
                OFFICIAL_COUNTS[domain],
            )
        return None
    want = expected.get(domain, 0)
    return f"{have} of {want} images in {found}" if have < want else None


@contextlib.contextmanager
def extraction_lock(base: str) -> Iterator[None]:
    """Hold ``base/.extract.lock`` (blocking): one process extracts, parallel jobs wait for it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    with open(os.path.join(base, ".extract.lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def download(url: str, base: str, md5: str | None) -> None:
    """Fetch ``url`` to ``<base>/<ARCHIVE>`` with torchvision's downloader (Google Drive through gdown)."""
    from torchvision.datasets.utils import download_url

    path = os.path.join(base, ARCHIVE)
    try:
        download_url(url, base, ARCHIVE, md5=md5)
    except BaseException:
        if os.path.isfile(path):
            os.remove(path)  # never leave a partial archive behind
        raise


def missing_message(base: str, missing: list[str], cfg: Office31Config, why: str) -> str:
    found = [d for d in DOMAINS if domain_dir(base, d)]
    source = f" (Google Drive: {cfg.url})" if cfg.url else ""
    return (
        f"Office-31 domain(s) {', '.join(missing)} not found in {base} (domains found: {', '.join(found) or 'none'}; "
        f"expected {base}/<domain>/images/<class>/*.jpg) and {why}: download {ARCHIVE}"
        f"{f' (md5 {cfg.md5})' if cfg.md5 else ''} from {HOMEPAGE}{source} and put it in {base}/ "
        "(it is extracted on the next run), or extract it there yourself"
    )


def ensure_domains(base: str, cfg: Office31Config) -> dict[str, str]:
    """``{domain: folder}`` for source and target; extracts (or downloads and extracts) the archive when a domain
    is missing or incomplete."""
    wanted = list(dict.fromkeys((cfg.source, cfg.target)))
    archive = os.path.join(base, ARCHIVE)
    expected = expected_counts(base)
    problems = {d: incomplete(base, d, expected) for d in wanted}
    if not any(problems.values()):
        if expected is not None and not os.path.isfile(os.path.join(base, MARKER)):
            with contextlib.suppress(OSError):  # checked against the archive once; a read-only folder is fine
                write_json(os.path.join(base, MARKER), {"archive": ARCHIVE, "counts": expected})
        return {d: domain_dir(base, d) for d in wanted}  # type: ignore[misc]
    missing = [d for d, why in problems.items() if why == "missing"]
    if not os.path.isfile(archive):
        partial = [f"{d} ({why})" for d, why in problems.items() if why not in (None, "missing")]
        if partial:
            raise DataError(
                f"Office-31 domain {', '.join(partial)}: an interrupted extraction; put {ARCHIVE} back in "
                f"{base}/ to extract it again, or delete the domain folder"
            )
        if not cfg.download or not cfg.url:
            raise DataError(missing_message(base, missing, cfg, "dataset.download is off"))
        try:
            os.makedirs(base, exist_ok=True)
            download(cfg.url, base, cfg.md5)
        except Exception as err:  # no network, a dead link, gdown absent, a bad checksum
            why = f"the download failed ({one_line(err)[:160]})"
            raise DataError(missing_message(base, missing, cfg, why)) from err
    with extraction_lock(base):
        expected = expected_counts(base)  # another process may have extracted it meanwhile
        if any(incomplete(base, d, expected) for d in wanted):
            if any(why not in (None, "missing") for why in problems.values()):
                log.warning("office31: %s is incomplete (an interrupted extraction): extracting it again", base)
            extract(archive, base, cfg.md5)
    missing = [d for d in wanted if domain_dir(base, d) is None]
    if missing:
        raise DataError(missing_message(base, missing, cfg, f"{ARCHIVE} did not contain them"))
    return {d: domain_dir(base, d) for d in wanted}  # type: ignore[misc]


def build_office31(cfg: Office31Config, seed: int, data_root: str) -> Task:
    base = os.path.join(data_root, "office31")
    dirs = ensure_domains(base, cfg)
    cache = cache_options(cfg, data_root)
    if cfg.source == cfg.target:  # train-on-target reference: one domain, fixed stratified split
        folder = FolderConfig(resize=cfg.resize, crop=cfg.crop)
        return one_domain_task("office31", cfg.source, dirs[cfg.source], folder, cache)
    return two_domain_task("office31", cfg.source, cfg.target, dirs, cfg.resize, cfg.crop, cache=cache)
