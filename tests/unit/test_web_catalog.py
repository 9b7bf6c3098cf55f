"""The web UI's gettext catalogs are complete: every message in the templates and in
cloud/web's Python is in each language's messages.po (run `make i18n` when this fails),
none is left over, every zh-CN message is translated (not fuzzy), and placeholders
match their msgid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from cloud.web.i18n import LOCALE_DIR, LOCALES, catalog_dir, translations

ROOT = Path(__file__).resolve().parents[2]


def extracted() -> set[str]:
    with (ROOT / "babel.cfg").open() as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    ids = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT / "cloud" / "web"), method_map, options_map,
            keywords={"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}):
        ids.add(message if isinstance(message, str) else message[0])
    return ids


def catalog(locale: str) -> Any:
    po = LOCALE_DIR / catalog_dir(locale) / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as fh:
        return read_po(fh, locale=catalog_dir(locale))


def test_catalogs_hold_exactly_the_extracted_messages() -> None:
    wanted = extracted()
    assert len(wanted) > 150
    for locale in LOCALES:
        have = {m.id for m in catalog(locale) if m.id}
        assert not wanted - have, f"{locale}: not in the catalog (run `make i18n`): " \
            f"{sorted(wanted - have)[:10]}"
        assert not have - wanted, f"{locale}: no longer used (run `make i18n`): " \
            f"{sorted(have - wanted)[:10]}"


def test_every_chinese_message_is_translated_and_well_formed() -> None:
    cat = catalog("zh-CN")
    untranslated = [m.id for m in cat if m.id and (not m.string or m.fuzzy)]
    assert not untranslated, f"zh_CN untranslated or fuzzy: {untranslated[:10]}"
    problems = [(m.id, [str(e) for e in errors]) for m, errors in cat.check()]
    assert not problems, problems
    t = translations("zh-CN")
    assert t.gettext("Work orders") == "生产工单"
    assert t.gettext("Page %(page)s of %(pages)s · %(total)s rows") % {
        "page": 1, "pages": 2, "total": 30} == "第 1 / 2 页 · 共 30 行"


def test_english_catalog_falls_back_to_the_msgids() -> None:
    assert translations("en").gettext("Work orders") == "Work orders"
