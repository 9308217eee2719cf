"""Where a registered model's weights come from: a chain of sources, tried in order.

    fetched = fetch_weights(model_info("ViT-B/16"))   # Fetched(state_dict, path, source)

For an official name the chain is

1. clipviz's cache: OpenAI's archive ``<cache>/ViT-B-16.pt`` (SHA256 pinned), then the mirror
   file ``<cache>/hf/<repo>/<file>`` (SHA256 pinned, or the one recorded when it was downloaded);
2. openai/clip's cache ``~/.cache/clip/ViT-B-16.pt`` (SHA256 pinned), read in place;
3. the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) when a mirror file is already there,
   read in place without network (its blob is named by the SHA256 the Hub declared);
4. OpenAI's URL (SHA256 pinned), into clipviz's cache;
5. the Hugging Face Hub mirrors through ``huggingface_hub.hf_hub_download`` (resume,
   ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, tokens and proxies are the client's), into clipviz's
   cache, checked against the pinned SHA256 or else the LFS SHA256 the Hub declares.

Every file found is read as weights only (``clipviz.checkpoints``), converted to OpenAI's layout
when it is a transformers one, and compared key by key and shape by shape with the name's
architecture. A source that fails says why and the next one is tried; a file clipviz stored
itself that fails is deleted, so the cache never keeps a wrong model. When every source fails,
one ClipvizError lists them all with the manual step.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .cache import SHA256_PATTERN, cache_dir, download, file_sha256
from .checkpoints import read_checkpoint
from .errors import ClipvizError

HUB_INSTALL = "pip install huggingface_hub (a clipviz dependency; was it installed with --no-deps?)"


@dataclass(frozen=True)
class Mirror:
    """A copy of a model's weights in a Hugging Face Hub repository.

    repo_id:  ``owner/name`` on the Hub, e.g. ``timm/vit_base_patch16_clip_224.openai``.
    filename: the file in it, e.g. ``open_clip_model.safetensors``.
    revision: a 40-hex commit where public sources pin one, else ``main``.
    sha256:   the file's digest where public sources give it, else None (the Hub's LFS
              SHA256 is checked instead).
    layout:   ``openai`` (OpenCLIP files use OpenAI's parameter names) or ``transformers``
              (``openai/clip-vit-*`` repos, converted by ``clipviz.convert``).
    """

    repo_id: str
    filename: str
    revision: str = "main"
    sha256: str | None = None
    layout: str = "openai"

    @property
    def url(self) -> str:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.repo_id}/resolve/{self.revision}/{self.filename}"


@dataclass
class Fetched:
    """Weights that passed every check: ``state_dict`` in OpenAI's layout, read from ``path``,
    found by ``source`` (its ``label`` says which kind, e.g. "Hugging Face Hub")."""

    state_dict: dict
    path: Path
    source: object


def fetch_weights(entry, root=None, progress: bool = True, keep: bool = False) -> Fetched:
    """The weights of registry entry ``entry`` from the first source that has the right ones.

    root: clipviz's cache folder (default ``cache_dir()``). progress: show download progress
    bars on stderr. keep: a file found in another tool's cache (openai/clip's, Hugging Face's) is
    copied into clipviz's, so that copying clipviz's cache folder carries it (``clipviz
    download``). Raises ClipvizError listing every source tried and why it failed, and the file
    to put where by hand.
    """
    failures = []
    for source in sources(entry, root):
        try:
            path = source.get(progress)
        except ClipvizError as error:
            failures.append((source, str(error)))
            continue
        try:
            state_dict = checked_weights(path, source.layout, entry.architecture)
            if keep and hasattr(source, "copy_into"):
                path = source.copy_into(Path(root).expanduser() if root is not None else cache_dir())
            return Fetched(state_dict, path, source)
        except ClipvizError as error:
            if source.owned:  # never keep a file that is not this model
                source.discard(path)
            failures.append((source, str(error)))
    raise ClipvizError(_all_failed(entry, failures, root))


def checked_weights(path: Path, layout: str, architecture: str | None) -> dict:
    """The file's state dict in OpenAI's layout; ClipvizError when it is not ``architecture``."""
    state_dict = read_checkpoint(path)
    if layout == "transformers":
        from .convert import from_transformers

        state_dict = from_transformers(state_dict)
    if architecture is not None:
        from .model import architecture_mismatch, model_config

        if "visual.proj" not in state_dict and "visual.layer1.0.conv1.weight" not in state_dict:
            model_config(state_dict)  # its message says which key shows it is no CLIP
        mismatch = architecture_mismatch(state_dict, architecture)
        if mismatch:
            raise ClipvizError(f"{path} holds another model than {architecture}: {mismatch}")
    return state_dict


def locate(entry, root=None):
    """The first source holding a file for ``entry`` without network, or None; no hashing, so it
    only says where a load would look first (``clipviz models``)."""
    return next((s for s in sources(entry, root) if s.local and s.present()), None)


def sources(entry, root=None) -> list:
    """The chain for a registry entry, in the order it is tried (see the module docstring)."""
    root = Path(root).expanduser() if root is not None else cache_dir()
    chain = []
    if entry.path is not None:
        chain.append(BundledFile(entry.path, entry.sha256))
    archive = entry.url.rstrip("/").split("/")[-1] if entry.url else None
    if archive:
        chain.append(CachedFile("clipviz cache", root / archive, entry.sha256, owned=True))
    chain += [CachedFile("clipviz cache", mirror_path(root, m), m.sha256, owned=True,
                         layout=m.layout, record=True) for m in entry.mirrors]
    if archive and entry.sha256:
        chain.append(CachedFile("openai/clip cache", openai_cache_dir() / archive, entry.sha256))
    chain += [HubCacheFile(m) for m in entry.mirrors]
    if entry.url:
        chain.append(UrlDownload(entry.url, root / archive, entry.sha256))
    chain += [HubDownload(m, root) for m in entry.mirrors]
    return chain


def mirror_path(root: Path, mirror: Mirror) -> Path:
    """Where clipviz keeps a mirror file: ``<root>/hf/<owner>/<repo>/<file>``."""
    return root / "hf" / mirror.repo_id / mirror.filename


def openai_cache_dir() -> Path:
    """openai/clip's default ``download_root``: ``~/.cache/clip``."""
    return Path("~/.cache/clip").expanduser()


# ----------------------------------------------------------------------------- local sources

class CachedFile:
    """A file already on this machine, checked against ``sha256``.

    ``record``: a mirror file in clipviz's cache. When nobody pinned its digest it carries the
    SHA256 it was verified against at download in ``<file>.sha256``, checked instead; a file put
    there by hand without either is taken on its architecture check alone; a damaged one is
    deleted (the Hub client would otherwise hand it back). ``owned``: in clipviz's own cache, so a
    file holding another architecture is deleted by ``fetch_weights``.
    """

    local = True

    def __init__(self, label: str, path: Path, sha256: str | None, owned: bool = False,
                 layout: str = "openai", record: bool = False):
        self.label, self.path, self.sha256, self.owned, self.layout = label, path, sha256, owned, layout
        self.record = record
        self.location = str(path)

    def present(self) -> bool:
        return self.path.is_file()

    def get(self, progress: bool) -> Path:
        if not self.path.is_file():
            raise ClipvizError("not there")
        expected = self.sha256 or (_read_record(self.path) if self.record else None)
        if expected is not None and file_sha256(self.path) != expected:
            if not self.record:  # another tool's file, or OpenAI's archive that download() replaces in one step
                raise ClipvizError(f"its SHA256 is not {expected} (damaged or another file)")
            # a mirror file: the Hub client would hand the same file back, so it goes now
            warnings.warn(f"{self.path} is damaged (its SHA256 is not {expected}); deleting it",
                          stacklevel=4)
            self.discard(self.path)
            raise ClipvizError(f"its SHA256 was not {expected} (damaged); deleted it")
        return self.path

    def discard(self, path: Path) -> None:
        for stale in (path, _record_path(path)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def copy_into(self, root: Path) -> Path:
        """openai/clip's archive copied to ``<root>/<file>``, where clipviz's cache looks first."""
        return self.path if self.owned else _copy(self.path, root / self.path.name)


class BundledFile(CachedFile):
    """A checkpoint shipped inside the package (SHA256 pinned by the registry)."""

    def __init__(self, path: Path, sha256: str | None):
        super().__init__("bundled", path, sha256)

    def get(self, progress: bool) -> Path:
        if not self.path.is_file():
            raise ClipvizError("missing; reinstall clipviz")
        if self.sha256 is not None and file_sha256(self.path) != self.sha256:
            raise ClipvizError(f"damaged (its SHA256 is not {self.sha256}); reinstall clipviz")
        return self.path

    def copy_into(self, root: Path) -> Path:
        return self.path  # package data travels with the install


class HubCacheFile:
    """A mirror file already in the Hugging Face cache, found without network through
    ``huggingface_hub.try_to_load_from_cache``. The cache names each blob by the SHA256 the Hub
    declared for it; the bytes are checked against that (or the pinned digest)."""

    label, local, owned = "Hugging Face cache", True, False

    def __init__(self, mirror: Mirror):
        self.mirror, self.layout, self.verified = mirror, mirror.layout, None
        self.location = f"{mirror.repo_id}/{mirror.filename}"

    def _cached(self):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        found = try_to_load_from_cache(self.mirror.repo_id, self.mirror.filename,
                                       revision=self.mirror.revision)
        return Path(found) if isinstance(found, str) else None

    def present(self) -> bool:
        return self._cached() is not None

    def get(self, progress: bool) -> Path:
        path = self._cached()
        if path is None:
            raise ClipvizError("not there" if _hub_installed() else
                               f"huggingface_hub is not installed ({HUB_INSTALL})")
        blob = path.resolve().name
        expected = self.mirror.sha256 or (blob if SHA256_PATTERN.fullmatch(blob) else None)
        if expected is not None and file_sha256(path) != expected:
            raise ClipvizError(f"{path} does not have SHA256 {expected} (damaged); left as it is")
        self.verified = expected
        return path

    def copy_into(self, root: Path) -> Path:
        """The file copied to clipviz's mirror path, with the digest it was checked against."""
        target = _copy(self._cached(), mirror_path(root, self.mirror))
        if self.verified:
            _record_path(target).write_text(self.verified + "\n")
        return target


# ----------------------------------------------------------------------------- downloads

class UrlDownload:
    """A plain HTTPS download into clipviz's cache (``clipviz.cache.download``)."""

    local, owned, layout = False, True, "openai"

    def __init__(self, url: str, destination: Path, sha256: str):
        self.url, self.destination, self.sha256 = url, destination, sha256
        self.label = "OpenAI URL" if "openaipublic" in url else "URL"
        self.location = url
        self.brief = f"{urlsplit(url).netloc}/.../{destination.name}"

    def present(self) -> bool:
        return False

    def get(self, progress: bool) -> Path:
        try:
            return download(self.url, self.destination, self.sha256, progress=progress)
        except ClipvizError as error:  # its advice names this one file; the chain's names all
            raise ClipvizError(str(error).split(". Check the address")[0]) from None

    def discard(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class HubDownload:
    """A mirror file fetched with ``huggingface_hub.hf_hub_download`` into
    ``<root>/hf/<repo>/`` (its ``local_dir``, where an interrupted download resumes).

    First a HEAD request (``get_hf_file_metadata``) reads the commit and the LFS SHA256 the Hub
    declares; the file is then downloaded at that commit and its bytes are checked against the
    pinned SHA256, or else the declared one, which is recorded beside it for later loads.
    """

    label, local, owned = "Hugging Face Hub", False, True

    def __init__(self, mirror: Mirror, root: Path):
        self.mirror, self.layout = mirror, mirror.layout
        self.folder = root / "hf" / mirror.repo_id
        self.location, self.brief = mirror.url, mirror.repo_id

    def present(self) -> bool:
        return False

    def get(self, progress: bool) -> Path:
        try:
            import huggingface_hub as hub
        except ImportError:
            raise ClipvizError(f"needs the huggingface_hub package: {HUB_INSTALL}") from None
        mirror = self.mirror
        try:
            meta = hub.get_hf_file_metadata(hub.hf_hub_url(mirror.repo_id, mirror.filename,
                                                           revision=mirror.revision))
            expected = mirror.sha256 or meta.etag
            if not (expected and SHA256_PATTERN.fullmatch(expected)):
                raise ClipvizError(f"the Hub declares no SHA256 for it (ETag {meta.etag!r}), so it "
                                   "cannot be verified")
            options = {}
            if "tqdm_class" in inspect.signature(hub.hf_hub_download).parameters:  # clients >= 1.0
                options["tqdm_class"] = _progress_class(progress)
            found = hub.hf_hub_download(mirror.repo_id, mirror.filename,
                                        revision=meta.commit_hash or mirror.revision,
                                        local_dir=self.folder, **options)
        except ClipvizError:
            raise
        except Exception as error:  # the client's own errors: offline, HTTP status, network, disk
            raise ClipvizError(_hub_reason(error)) from None
        path = Path(found)
        digest = file_sha256(path)
        if digest != expected.lower():
            self.discard(path)
            raise ClipvizError(f"the received file has SHA256 {digest}, not {expected}; deleted it")
        _record_path(path).write_text(digest + "\n")
        return path

    def discard(self, path: Path) -> None:
        """Delete the repo's folder (file, record, the client's metadata) and empty parents."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in (self.folder.parent, self.folder.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when empty


def _progress_class(show: bool):
    """A plain tqdm class for hf_hub_download's bar: shown on stderr whenever ``show`` (also when
    stderr is not a terminal, as clipviz's own download bar; huggingface_hub's class hides itself
    there), hidden otherwise. ``HF_HUB_DISABLE_PROGRESS_BARS`` still hides it."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from tqdm.auto import tqdm

    hidden = not show or are_progress_bars_disabled()

    class Progress(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.update(disable=hidden, unit_divisor=1024)
            super().__init__(*args, **kwargs)

    return Progress


def _hub_installed() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def _hub_reason(error: Exception) -> str:
    name = type(error).__name__
    if name == "OfflineModeIsEnabled":
        return "offline (HF_HUB_OFFLINE is set)"
    status = getattr(getattr(error, "response", None), "status_code", None)
    first = str(error).strip().split("\n")[0][:200]
    return f"{name}{f' (HTTP {status})' if status else ''}: {first}"


def _copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` through a temporary file beside it, renamed in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.copy")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ClipvizError(f"could not copy {source} into {target.parent} ({error}); free some space "
                           "or set CLIPVIZ_CACHE to another folder") from error
    return target


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> str | None:
    try:
        text = _record_path(path).read_text().strip().lower()
    except OSError:
        return None
    return text if SHA256_PATTERN.fullmatch(text) else None


# ----------------------------------------------------------------------------- the one message

def _all_failed(entry, failures, root) -> str:
    if not entry.url and not entry.mirrors:  # package data only: nothing to fetch
        return "; ".join(f"the weights file {s.location} for {entry.name!r} is {reason}"
                         for s, reason in failures)
    root = Path(root).expanduser() if root is not None else cache_dir()
    tried = "; ".join(f"({i}) {source.label} {source.location}: {reason}"
                      for i, (source, reason) in enumerate(failures, 1))
    steps = []
    if entry.mirrors:
        mirror = entry.mirrors[0]
        steps.append(f"download {mirror.url} and save it as {mirror_path(root, mirror)}")
    if entry.url:
        archive = entry.url.rstrip("/").split("/")[-1]
        steps.append(f"put OpenAI's {archive} (SHA256 {entry.sha256}) in {root}/")
    manual = " or ".join(steps) if steps else "reinstall clipviz"
    return (f"could not get the weights of {entry.name!r} from any source. Tried {tried}. "
            f"By hand: {manual} (or run 'clipviz download {entry.name}' on a machine with "
            f"internet and copy {root} here, or point CLIPVIZ_CACHE at a copy).")
