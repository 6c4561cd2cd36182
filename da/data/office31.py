"""``dataset=office31``: Office-31 (Saenko et al., ECCV 2010), amazon / dslr / webcam, 31 office object classes.

Layout: ``<data_root>/office31/<domain>/images/<class>/*.jpg`` (the extracted ``domain_adaptation_images.tar.gz``;
``<domain>/<class>/*.jpg`` is accepted too). Protocol: the standard transductive one (Ganin et al.
arXiv 1409.7495; Long et al. arXiv 1705.10667): all source images labelled and all target images unlabelled for
training, accuracy reported on all target images. Images are resized to 256x256 once and held as uint8 tensors;
training takes a random 224 crop and a horizontal flip, evaluation the centre 224 crop; ImageNet normalisation.

When the domains are missing, the archive is extracted if it lies in ``<data_root>/office31/``, else downloaded
from ``dataset.url`` (checked against ``dataset.md5``) when ``dataset.download`` is true; otherwise, or when
that fails, one error line says what to download and where to put it.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

from da.config import one_line
from da.data.base import Task
from da.data.folder import FolderConfig, check_sizes, one_domain_task, two_domain_task
from da.data.images import subfolders
from da.errors import ConfigError, DataError

DOMAINS = ("amazon", "dslr", "webcam")
ARCHIVE = "domain_adaptation_images.tar.gz"
HOMEPAGE = "https://faculty.cc.gatech.edu/~judy/domainadapt/"


@dataclass
class Office31Config:
    name: str = "office31"
    source: str = "amazon"  # amazon | dslr | webcam
    target: str = "webcam"
    resize: int = 256
    crop: int = 224
    download: bool = True  # try dataset.url when the images are not under <data_root>/office31
    url: str | None = "https://drive.google.com/uc?id=0B4IapRTv9pJ1WGZVd1VDMmhwdlE"  # the authors' archive
    md5: str | None = "1b536d114869a5a8aa4580b89e9758fb"  # of the archive, as DeepMind's dm_nevis lists it

    def __post_init__(self) -> None:
        for key in ("source", "target"):
            if getattr(self, key) not in DOMAINS:
                raise ConfigError(
                    f"dataset.{key} for office31 must be one of {', '.join(DOMAINS)}, got {getattr(self, key)!r}"
                )
        check_sizes(self.resize, self.crop)


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
    """Check the archive's md5 (torchvision's ``check_integrity``) and extract it. The extraction stays on
    ``tarfile`` with its "data" filter: torchvision's ``extract_archive`` (0.29) extracts every member as is,
    so a crafted archive could write outside ``base``."""
    from torchvision.datasets.utils import check_integrity

    if md5 and not check_integrity(archive, md5):
        raise DataError(
            f"{archive} does not match md5 {md5} (a partial or different download): delete it and download it "
            "again, or set dataset.md5=null to skip the check"
        )
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(base, filter="data")  # refuses absolute paths and links out of base
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(base)  # noqa: S202
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot extract {archive}: {one_line(err)}") from err


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
    """``{domain: folder}`` for source and target; extracts or downloads the archive when a domain is missing."""
    wanted = list(dict.fromkeys((cfg.source, cfg.target)))
    missing = [d for d in wanted if domain_dir(base, d) is None]
    if missing:
        archive = os.path.join(base, ARCHIVE)
        if not os.path.isfile(archive):
            if not cfg.download or not cfg.url:
                raise DataError(missing_message(base, missing, cfg, "dataset.download is off"))
            try:
                os.makedirs(base, exist_ok=True)
                download(cfg.url, base, cfg.md5)
            except Exception as err:  # no network, a dead link, gdown absent, a bad checksum
                raise DataError(
                    missing_message(base, missing, cfg, f"the download failed ({one_line(err)[:160]})")
                ) from err
        extract(archive, base, cfg.md5)
        missing = [d for d in wanted if domain_dir(base, d) is None]
        if missing:
            raise DataError(missing_message(base, missing, cfg, f"{ARCHIVE} did not contain them"))
    return {d: domain_dir(base, d) for d in wanted}  # type: ignore[misc]


def build_office31(cfg: Office31Config, seed: int, data_root: str) -> Task:
    base = os.path.join(data_root, "office31")
    dirs = ensure_domains(base, cfg)
    if cfg.source == cfg.target:  # train-on-target reference: one domain, fixed stratified split
        return one_domain_task("office31", cfg.source, dirs[cfg.source], FolderConfig(resize=cfg.resize, crop=cfg.crop))
    return two_domain_task("office31", cfg.source, cfg.target, dirs, cfg.resize, cfg.crop)
