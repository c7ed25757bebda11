"""A folder an earlier pull left, judged for ``bundle pull --reuse``: kept when it is a
complete copy of the wanted bundle, every file hashed against the manifest; otherwise cleared
(with the staging folders of other pulls to the same place) for the pull to fill again.

A complete copy: the record ``bundle pull`` writes last (``.weightshift/bundle.json``) names
the wanted id and digest; the files are exactly the manifest's, each of its size and sha256;
the serving layout (``hf/``) is there, each file the same content as its source, exactly when
it is asked for. The staging folder of the wanted bundle is never cleared: an interrupted
pull resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path, PurePosixPath

from weightshift.bundles import strict_json
from weightshift.bundles.hashing import Meter, hash_files
from weightshift.bundles.layout import list_files
from weightshift.bundles.manifest import SERVING_DIR, Manifest
from weightshift.bundles.store.bucket import PULLED_ID
from weightshift.bundles.store.manifests import Published


def serving_sources(manifest: Manifest) -> dict[str, str]:
    """The serving layout's file names -> the bundle file each is (``link_serving_layout``)."""
    sources = [e.path for e in manifest.files if e.path == "model/config.json"]
    for folder in ("model/weights/", "model/tokenizer/"):
        sources += sorted(e.path for e in manifest.files if e.path.startswith(folder))
    return {PurePosixPath(rel).name: rel for rel in sources}


def _record_problem(published: Published, dest: Path) -> str | None:
    """What is wrong with the record of what ``dest`` holds; None if it names the bundle."""
    try:
        record = strict_json.loads((dest / PULLED_ID).read_bytes())
        recorded, digest = str(record["id"]), str(record["digest"])
    except FileNotFoundError:
        return f"no {PULLED_ID}, the record a finished pull writes last"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{PULLED_ID} is not the record a pull writes"
    if recorded != str(published.manifest.id) or digest != published.manifest.digest:
        return f"it holds {recorded}"
    return None


def _layout_problem(manifest: Manifest, dest: Path, files: list[str], serving: bool) -> str | None:
    """Files missing, extra or of the wrong size; the serving layout absent or unasked."""
    entries = manifest.by_path()
    derived = {PULLED_ID} | {f for f in files if f.startswith(SERVING_DIR + "/")}
    own = [f for f in files if f not in derived]
    extra = sorted(set(own) - set(entries))
    missing = sorted(set(entries) - set(own))
    if extra:
        return f"{extra[0]} is not a file of the bundle"
    if missing:
        return f"{len(missing)} file(s) of the bundle missing, {missing[0]} first"
    wrong = [rel for rel in own if (dest / rel).stat().st_size != entries[rel].size]
    if wrong:
        return f"{wrong[0]} is not the size the manifest gives"
    served = {PurePosixPath(f).name for f in derived - {PULLED_ID}}
    if serving and served != set(serving_sources(manifest)):
        return f"the serving layout {SERVING_DIR}/ is missing or incomplete"
    if not serving and served:
        return f"a serving layout {SERVING_DIR}/ that was not asked for"
    return None


def copy_problem(
    published: Published, dest: Path, serving: bool, workers: int, meter: Meter
) -> str | None:
    """None if ``dest`` is a complete copy of ``published`` (module doc), every file hashed;
    otherwise what is wrong with it, in a few words."""
    problem = _record_problem(published, dest)
    if problem is not None:
        return problem
    files, links = list_files(dest)
    if links:
        return links[0]
    problem = _layout_problem(published.manifest, dest, files, serving)
    if problem is not None:
        return problem
    expected = {entry.path: entry.sha256 for entry in published.manifest.files}
    if serving:
        entries = published.manifest.by_path()
        for name, source in serving_sources(published.manifest).items():
            served = dest / SERVING_DIR / name
            if not os.path.samefile(served, dest / source):  # a copy where a link failed
                expected[f"{SERVING_DIR}/{name}"] = entries[source].sha256
    hashed = hash_files(dest, sorted(expected), workers, meter.add)
    for rel in sorted(expected):
        if hashed[rel][0] != expected[rel]:
            return f"{rel} does not match its sha256 in the manifest"
    return None


def clear(dest: Path, keep: Path) -> None:
    """Empty ``dest`` but for ``keep`` (a staging folder to resume from); then remove ``dest``
    itself if it is empty and can go (a mount point cannot: it stays, as an empty folder)."""
    for child in dest.iterdir():
        if child == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    if not any(dest.iterdir()):
        with contextlib.suppress(OSError):  # a mount point: the pull fills it in place
            dest.rmdir()


def stray_staging(dest: Path, keep: Path | None) -> list[Path]:
    """Staging folders of pulls to ``dest`` other than ``keep``: interrupted pulls of other
    bundles (``.<dest>.partial-<hash>`` beside it, ``.partial-<hash>`` inside it)."""
    found = list(dest.parent.glob(f".{dest.name}.partial-*"))
    if dest.is_dir():
        found += dest.glob(".partial-*")
    return sorted(path for path in found if path != keep and path.is_dir())
