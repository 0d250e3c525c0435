"""beets plugin: melgenre's predicted genre for the items of a beets library (docs/beets.md).

``beet melgenre [QUERY]`` predicts the matching items into melgenre's results database
(:func:`melgenre.library.predict_library`: a rerun skips every file already predicted) and then,
item by item, stores the answer as flexible attributes and sets the item's genre where it has
none (``--force``: over an existing one too), never from an unsure, not-music or silent answer.
With ``auto: yes`` the same runs on the items of each ``beet import`` once their files are in place.

This module is beets glue only; everything melgenre does is in :mod:`melgenre.library` and
:mod:`melgenre.tagging` (the spelling of genres and the rules of ``melgenre tag``).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from beets import config as beets_config
from beets import ui
from beets.dbcore import types
from beets.library import Item
from beets.plugins import BeetsPlugin
from beets.util import displayable_path

#: The item field of the genre: beets 2.7 made it the list ``genres``, earlier ones have the text ``genre``.
GENRE_FIELD = "genres" if "genres" in Item._fields else "genre"

#: Results database file name in beets' configuration folder (the default of ``database``).
DATABASE_NAME = "melgenre.sqlite"


def item_genre(item: Item) -> str:
    """The item's genre as one line of text ("" when it has none)."""
    value = item.get(GENRE_FIELD)
    return "; ".join(value) if isinstance(value, list) else (value or "")


def set_item_genre(item: Item, genre: str) -> None:
    """Set the item's genre to ``genre`` (in beets' field of this version, see :data:`GENRE_FIELD`)."""
    item[GENRE_FIELD] = [genre] if GENRE_FIELD == "genres" else genre


def _resolved(item: Item) -> str:
    """The item's file as :func:`melgenre.library.predict_library` keys it: absolute and resolved."""
    return str(Path(os.fsdecode(item.path)).resolve())


class MelgenrePlugin(BeetsPlugin):
    """``beet melgenre [QUERY]`` and, with ``auto: yes``, genres for the items of every import."""

    item_types = {
        "melgenre_genre": types.STRING,
        "melgenre_confidence": types.Float(2),
        "melgenre_model": types.STRING,
        "melgenre_flags": types.STRING,
    }

    def __init__(self) -> None:
        super().__init__()
        self.config.add({
            "model": None,  # melgenre's default model
            "database": None,  # DATABASE_NAME in beets' configuration folder
            "auto": False,
            "force": False,
            "write": None,  # beets' own import.write
            "min_confidence": None,  # melgenre tag's default (melgenre.tagging.DEFAULT_MIN_CONFIDENCE)
            "hop": None,  # the model's own
            "windows": None,  # the model's own: at most 5 windows a song for the default (melgenre.windows); "all" scores every one
        })
        self._imported: list[int] = []
        if self.config["auto"].get(bool):
            self.register_listener("import_task_files", self._collect)
            self.register_listener("import", self._tag_imported)

    # -- configuration ---------------------------------------------------------------------------

    def database(self) -> Path:
        """The results database: the ``database`` option, else melgenre.sqlite in beets' configuration folder."""
        if self.config["database"].get() is None:
            return Path(beets_config.config_dir()) / DATABASE_NAME
        return Path(self.config["database"].as_filename())

    def model(self, override: str | None = None) -> str | None:
        """The model to load: ``override`` (``--model``), the ``model`` option, else None (melgenre's default)."""
        model = override or self.config["model"].get()
        return os.path.expanduser(str(model)) if model else None

    def should_write(self, override: bool | None = None) -> bool:
        """Whether to write tags into the files: ``override`` (``-w/-W``), else the ``write`` option, else
        beets' ``import.write``."""
        if override is not None:
            return override
        value = self.config["write"].get()
        return ui.should_write() if value is None else bool(value)

    # -- the command -----------------------------------------------------------------------------

    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("melgenre", help="predict genres with melgenre and set them where missing")
        cmd.parser.add_option("-f", "--force", action="store_true", default=None,
                              help="replace an existing genre too (never with an unsure or not-music answer)")
        cmd.parser.add_option("-n", "--pretend", action="store_true", default=False,
                              help="show what would change; change nothing in the library or the files")
        cmd.parser.add_option("-m", "--model", help="melgenre model (a package .json, run folder, .onnx or a "
                                                    "shipped name; default: the model option)")
        cmd.parser.add_option("-w", "--write", action="store_true", default=None,
                              help="write the genre into the files (default: beets' import.write)")
        cmd.parser.add_option("-W", "--nowrite", action="store_false", dest="write",
                              help="change the library only, not the files")

        def run(lib, opts, args):
            force = opts.force if opts.force is not None else self.config["force"].get(bool)
            self.tag_items(lib.items(args), model=self.model(opts.model), force=force, pretend=opts.pretend,
                           write=self.should_write(opts.write))

        cmd.func = run
        return [cmd]

    # -- import ----------------------------------------------------------------------------------

    def _collect(self, session, task) -> None:
        """Note the task's items once beets has moved or copied their files into the library."""
        self._imported += [item.id for item in task.imported_items()]

    def _tag_imported(self, lib, paths) -> None:
        """Predict every item of the finished import at once (one model load for the whole import)."""
        items = [item for item in map(lib.get_item, self._imported) if item is not None]
        self._imported = []
        if items:
            self.tag_items(items, model=self.model(), force=self.config["force"].get(bool), pretend=False,
                           write=self.should_write())

    # -- the work --------------------------------------------------------------------------------

    def tag_items(self, items, model: str | None, force: bool, pretend: bool, write: bool) -> Counter:
        """Predict ``items`` into the results database, then store each answer and set the genres the rules allow.

        Each predicted item gets the flexible attributes ``melgenre_genre``, ``melgenre_confidence``,
        ``melgenre_model`` and ``melgenre_flags``. Its genre is set only when the answer is not
        flagged unsure, not_music or silent, its confidence reaches ``min_confidence``, and the item
        has no genre yet (or ``force``). With ``pretend`` the items are only reported (the
        results database, a cache, is still filled).

        Returns
        -------
        Counter
            Items per outcome: ``written``, ``kept`` (already had a genre), ``flagged``, ``failed``.

        Raises
        ------
        beets.ui.UserError
            The model cannot be loaded or the database is not a melgenre results database (one line).
        """
        from melgenre import library
        from melgenre.errors import MelgenreError
        from melgenre.tagging import BLOCKING_FLAGS, DEFAULT_MIN_CONFIDENCE, genre_name
        from melgenre.windows import WindowCount

        items = list(items)
        counts: Counter = Counter()
        if not items:
            ui.print_("melgenre: no items match")
            return counts
        database = self.database()
        if library.FORMATS.get(database.suffix.lower()) != "sqlite":
            raise ui.UserError(f"melgenre: {displayable_path(str(database))}: the database must be an SQLite file "
                               f"(.sqlite, .sqlite3 or .db)")
        min_confidence = self.config["min_confidence"].get()
        min_confidence = DEFAULT_MIN_CONFIDENCE if min_confidence is None else float(min_confidence)
        hop, windows = self.config["hop"].get(), self.config["windows"].get()
        try:
            windows = None if windows is None else WindowCount.parse(windows)  # the one windows setting type
            report = library.predict_library([_resolved(i) for i in items], database, model=model,
                                             hop=None if hop is None else float(hop), windows=windows,
                                             progress=sys.stderr.isatty())
            rows = {r["path"]: r for r in library.result_rows(database)}
        except MelgenreError as exc:
            raise ui.UserError(f"melgenre: {exc}") from None

        rewritten = []
        for item in items:
            where = displayable_path(item.path)
            row = rows.get(_resolved(item))
            if row is None or row["error"] is not None or row["label"] is None:
                counts["failed"] += 1
                ui.print_(f"melgenre: failed: {where}: {row['error'] if row else 'no result'}")
                continue
            new, old = genre_name(row["label"]), item_genre(item)
            flags = [f for f in row["flags"] or () if f in BLOCKING_FLAGS]
            if row["confidence"] < min_confidence:
                flags.append(f"confidence {row['confidence']:.2f} < {min_confidence:.2f}")
            change = False
            if flags:
                counts["flagged"] += 1
                self._log.debug("{}: {} not set ({})", where, new, ", ".join(flags))
            elif old and (not force or old.lower() == new.lower()):
                counts["kept"] += 1
                self._log.debug("{}: keeps genre {} ({} predicted)", where, old, new)
            else:
                change = True
                counts["written"] += 1
                ui.print_(f"melgenre: {'would set' if pretend else 'set'} {new}"
                          f"{f' (was {old})' if old else ''}: {where}")
            if pretend:
                continue
            item.update({"melgenre_genre": new, "melgenre_confidence": row["confidence"],
                         "melgenre_model": row["model_id"], "melgenre_flags": ",".join(row["flags"] or ())})
            if change:
                set_item_genre(item, new)
                if write and item.try_write():  # on failure beets logs why; the library keeps the genre
                    rewritten.append(row["path"])
            item.store()
        if rewritten:
            try:
                library.refresh_rows(database, rewritten)
            except (OSError, MelgenreError) as exc:
                self._log.warning("cannot update {} ({}): the next run predicts the {} files it wrote again",
                                  displayable_path(str(database)), exc, len(rewritten))
        ui.print_(f"melgenre: {counts['written']} {'would be written' if pretend else 'written'}, "
                  f"{counts['kept']} kept (had a genre), {counts['flagged']} flagged (not written), "
                  f"{counts['failed']} failed; {report.predicted} predicted, {report.skipped} already in "
                  f"{displayable_path(str(database))} (model {report.model_id})")
        return counts
