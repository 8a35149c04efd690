"""The panel's languages (firmware/panel.py + firmware/locale): every text has a Japanese
translation with the same placeholders, the committed .mo says what the .po says, English output is
what it always was, and the panel's name-less variants never leave a bare placeholder.

Run as a script to recompile the catalogs after editing a .po:
    .venv/bin/python tests/unit/test_panel_i18n.py
(GNU `msgfmt -o tenantprint.mo tenantprint.po` gives an equivalent file: the test compares what the
catalogs say, not their bytes.)
"""

from __future__ import annotations

import ast
import gettext
import io
import struct
import sys
from array import array
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from firmware import panel  # noqa: E402

PO_FILES = sorted((ROOT / "firmware" / "locale").glob("*/LC_MESSAGES/tenantprint.po"))
OTHER_LANGUAGES = [lang for lang in panel.LANGUAGES if lang != "en"]
FIELDS = {"org": "acme", "user": "alice", "count": 2}


# -- a small stdlib msgfmt ----------------------------------------------------------------------

def read_po(text: str) -> dict[str, str]:
    """msgid -> msgstr of a .po file (header included under ""; fuzzy and empty entries left out,
    as msgfmt does). Knows what our catalogs use: comments, msgid, msgstr, continued strings."""
    catalog: dict[str, str] = {}
    msgid = msgstr = None
    section = None
    fuzzy = False

    def flush() -> None:
        if msgid is not None and msgstr and not fuzzy:
            catalog[msgid] = msgstr

    for raw in text.splitlines() + [""]:
        line = raw.strip()
        if not line or line.startswith("#"):
            if msgstr is not None:
                flush()
                msgid = msgstr = section = None
                fuzzy = False
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            continue
        if line.startswith("msgid "):
            msgid, section, line = "", "id", line[6:]
        elif line.startswith("msgstr "):
            msgstr, section, line = "", "str", line[7:]
        value = ast.literal_eval(line)
        if section == "id":
            msgid += value
        else:
            msgstr += value
    return catalog


def compile_mo(catalog: dict[str, str]) -> bytes:
    """The GNU .mo image of a catalog (no hash table; entries sorted by their UTF-8 msgid)."""
    items = sorted((k.encode(), v.encode()) for k, v in catalog.items())
    ids = strs = b""
    spans = []
    for key, value in items:
        spans.append((len(ids), len(key), len(strs), len(value)))
        ids += key + b"\0"
        strs += value + b"\0"
    key_start = 7 * 4 + 16 * len(items)
    value_start = key_start + len(ids)
    key_table, value_table = [], []
    for id_at, id_len, str_at, str_len in spans:
        key_table += [id_len, key_start + id_at]
        value_table += [str_len, value_start + str_at]
    header = struct.pack("Iiiiiii", 0x950412DE, 0, len(items), 7 * 4, 7 * 4 + 8 * len(items), 0, 0)
    return header + array("i", key_table + value_table).tobytes() + ids + strs


def load_mo(data: bytes) -> dict[str, str]:
    return dict(gettext.GNUTranslations(io.BytesIO(data))._catalog)


def templates() -> set[str]:
    """Every English text the panel can show: the machine's lines, their name-less variants, the
    generic line and the panel's labels."""
    return {*panel.MESSAGES.values(), *panel.WITHOUT_NAMES.values(), *panel.WITHOUT_FIELDS.values(),
            *panel.LABELS.values(), panel.GENERIC}


# -- the catalogs --------------------------------------------------------------------------------

def test_every_language_has_a_catalog():
    assert OTHER_LANGUAGES == ["ja"]
    assert [p.parts[-3] for p in PO_FILES] == OTHER_LANGUAGES


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: p.parts[-3])
def test_committed_mo_says_what_the_po_says(po):
    compiled = load_mo(compile_mo(read_po(po.read_text(encoding="utf-8"))))
    committed = load_mo(po.with_suffix(".mo").read_bytes())
    assert committed == compiled


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: p.parts[-3])
def test_every_text_is_translated_with_the_same_placeholders(po):
    catalog = read_po(po.read_text(encoding="utf-8"))
    header = catalog.pop("")
    assert "charset=UTF-8" in header
    missing = templates() - catalog.keys()
    assert not missing, f"untranslated: {sorted(missing)}"
    stale = catalog.keys() - templates()
    assert not stale, f"no longer used: {sorted(stale)}"
    for english, translated in catalog.items():
        assert panel.placeholders(translated) == panel.placeholders(english), english
        assert translated.strip() and len(translated) <= panel.MAX_LEN, english


def test_every_machine_key_and_label_renders_in_japanese():
    for key in panel.MESSAGES:
        japanese = panel.text(key, lang="ja", **FIELDS)
        assert japanese != panel.text(key, **FIELDS) and "{" not in japanese, key
    assert panel.text("tunnel-down", lang="ja", org="acme") == "acme との接続が切れました — セッションを終了しました"
    assert panel.label("print-all", "ja") == "すべて印刷"
    assert panel.label("attempts-left", "ja", n=4) == "あと 4 回入力できます"
    assert panel.labels("ja")["remaining"] == "残り時間 {s} 秒"
    assert set(panel.labels("ja")) == set(panel.LABELS)


# -- English stays what it was --------------------------------------------------------------------

def english_as_before(key: str, **fields: object) -> str:
    """`text` as it was before the languages came (the reference the machine's tests rely on)."""
    template = panel.MESSAGES.get(key, "Please wait")
    try:
        line = template.format(**{k: panel.mask_card(v) for k, v in fields.items()})
    except (KeyError, IndexError, ValueError):
        line = template
    return line if len(line) <= panel.MAX_LEN else line[: panel.MAX_LEN - 1] + "…"


@pytest.mark.parametrize("fields", [{}, FIELDS, {"org": "x" * 150, "user": "card-0a1b2c3d4e"},
                                    {"org": ""}])
def test_english_output_is_unchanged(fields):
    for key in [*panel.MESSAGES, "no-such-key"]:
        assert panel.text(key, **fields) == english_as_before(key, **fields)
        assert panel.text(key, lang="en", **fields) == english_as_before(key, **fields)
    assert panel.text("ready", org="acme") == "Ready for acme — tap your card to release your jobs"
    assert panel.text("in-use") == panel.MESSAGES["in-use"]


def test_an_unknown_language_is_english():
    assert panel.language("fr") == panel.language(None) == "en"
    assert panel.text("idle", lang="fr") == panel.MESSAGES["idle"]
    assert panel.screen_text("tunnel-down", "xx") == "Connection lost — session ended"


# -- the panel's lines ---------------------------------------------------------------------------

def test_every_named_line_has_a_nameless_variant():
    for key, template in panel.MESSAGES.items():
        if panel.placeholders(template) & {"org", "user"}:
            assert key in panel.WITHOUT_NAMES, key
            assert panel.placeholders(panel.WITHOUT_NAMES[key]) <= {"count"}, key
    assert panel.WITHOUT_NAMES.keys() <= panel.MESSAGES.keys()
    for key, template in panel.WITHOUT_NAMES.items():
        if panel.placeholders(template):
            assert not panel.placeholders(panel.WITHOUT_FIELDS[key]), key
    assert panel.WITHOUT_FIELDS.keys() <= panel.WITHOUT_NAMES.keys()


@pytest.mark.parametrize("lang", panel.LANGUAGES)
def test_screen_text_never_shows_a_placeholder_or_a_missing_name(lang):
    for key in [*panel.MESSAGES, "no-such-key"]:
        for fields in ({}, {"org": None, "user": ""}, {"count": 3}):
            line = panel.screen_text(key, lang, **fields)
            assert "{" not in line and "}" not in line and line, (key, fields)
        full = panel.screen_text(key, lang, **FIELDS)
        assert full == panel.text(key, lang=lang, **FIELDS)
    assert panel.screen_text("tunnel-down", "en") == "Connection lost — session ended"
    assert panel.screen_text("releasing", "en", count=2, user=None) == "Releasing 2 job(s)…"
    assert panel.screen_text("released", "en") == "Your jobs were released"
    assert panel.screen_text("no-such-key", "ja") == "しばらくお待ちください"


def test_screen_text_masks_card_ids():
    assert panel.screen_text("authenticating", "ja", user="card-04a1b2c3d41e01") == \
        "card-…1e01 さんを確認しています…"


if __name__ == "__main__":
    for po_path in PO_FILES:
        po_path.with_suffix(".mo").write_bytes(compile_mo(read_po(po_path.read_text(encoding="utf-8"))))
        print("wrote", po_path.with_suffix(".mo").relative_to(ROOT))
