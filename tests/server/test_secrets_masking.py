"""The masking rules (:mod:`neocloud.masking`): which names are sensitive, which forms of a
value are masked, and that a stream cut anywhere never writes a value in clear."""

from __future__ import annotations

import base64
import json
import random
import re
from urllib.parse import quote, quote_plus

import pytest

from neocloud.masking import (
    MASK,
    MIN_MASKED_CHARS,
    Masker,
    encoded_forms,
    looks_sensitive,
    mask_env,
)
from neocloud.models import DeploymentOut
from neocloud.models.secrets import env_warnings
from neocloud.server.services.secrets import redact

VALUE = "sk-live/4f9a+1c77 e2d8=4b6b"


@pytest.mark.parametrize(("name", "sensitive"), [
    ("MY_API_KEY", True), ("hf_token", True), ("DbPassword", True), ("AWS_SECRET", True),
    ("GOOGLE_APPLICATION_CREDENTIALS", True), ("apikey", True), ("PATH", False),
    ("MODEL", False), ("NEOCLOUD_JUPYTER_TOKEN", True), ("PASSWD", False),
])
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert looks_sensitive(name) is sensitive


def test_mask_env_keeps_names_and_other_values() -> None:
    assert mask_env({"MY_API_KEY": VALUE, "MODEL": "minilm"}) == {
        "MY_API_KEY": MASK, "MODEL": "minilm"}


def forms_printed(value: str) -> list[str]:
    """The ways a program commonly prints a value."""
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe="")),
        json.dumps(value)[1:-1],
    ]


@pytest.mark.parametrize("value", [VALUE, "abcd", "pässwörd-ü", "x" * 200, "a\"b\\c\nd"])
def test_every_printed_form_is_masked(value: str) -> None:
    masker = Masker([value])
    for form in forms_printed(value):
        text = f"before {form} after\n"
        out = masker.mask_text(text)
        assert form not in out, (form, out)
        assert out.startswith("before ") and out.endswith(" after\n")


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:", "Basic user:"])
def test_value_inside_a_longer_base64_text_is_masked(prefix: str) -> None:
    """HTTP Basic credentials: base64 of ``user:password``; wherever the value starts in a
    3-byte group, its own characters are masked (at most 2 edge characters stay)."""
    blob = base64.b64encode(f"{prefix}{VALUE}!tail".encode()).decode()
    out = Masker([VALUE]).mask_text(blob)
    assert MASK in out
    assert len(out.replace(MASK, "")) <= len(blob) - len(VALUE) * 4 // 3 + 4


def test_short_values_are_not_masked() -> None:
    short = "x" * (MIN_MASKED_CHARS - 1)
    assert encoded_forms(short) == set()
    assert Masker([short]).mask_text(f"a {short} b") == f"a {short} b"
    assert not Masker([short])


def test_longest_value_wins() -> None:
    out = Masker(["secret-1", "secret-1-and-more"]).mask_text("secret-1-and-more secret-1")
    assert out == f"{MASK} {MASK}"


def test_stream_cut_anywhere_never_writes_a_value() -> None:
    """Every way of cutting the output into chunks, with a flush (nothing arrived for a
    while) after any chunk, writes the value nowhere and loses nothing else."""
    b64 = base64.b64encode(VALUE.encode()).decode()
    text = f"start {VALUE} mid {b64}\rprogress {quote(VALUE, safe='')} end\nlast {VALUE}"
    data = text.encode()
    expected = Masker([VALUE]).mask(data)
    rnd = random.Random(7)
    for _ in range(400):
        masker = Masker([VALUE])
        cuts = sorted(rnd.sample(range(1, len(data)), rnd.randint(1, 12)))
        out = b""
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            out += masker.feed(data[a:b])
            if rnd.random() < 0.5:
                out += masker.flush()
        out += masker.close()
        assert out == expected, cuts
        for form in forms_printed(VALUE)[:5]:
            assert form.encode() not in out


def test_long_line_without_break_is_written_in_parts() -> None:
    masker = Masker([VALUE])
    out = masker.feed(b"y" * 70_000 + VALUE.encode())
    assert len(out) >= 60_000 and VALUE.encode() not in out
    rest = masker.close()
    assert VALUE.encode() not in out + rest and (out + rest).endswith(MASK.encode())


def test_redact_masks_encoded_forms() -> None:
    b64 = base64.b64encode(VALUE.encode()).decode()
    assert redact(f"k={VALUE} b={b64}", [VALUE]) == f"k={MASK} b={MASK}"
    assert redact("nothing here", []) == "nothing here"


def test_out_models_mask_env_and_warn() -> None:
    dep = DeploymentOut.model_validate({
        "id": "d1", "name": "d", "service": "embeddings", "model": None, "shape": "cpu.small",
        "replicas": 1, "ready_replicas": 0, "status": "pending", "pending_reason": None,
        "generation": 1, "env": {"MY_API_KEY": VALUE, "MODEL": "m"}, "endpoint": "/e/d/",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
    assert dep.env == {"MY_API_KEY": MASK, "MODEL": "m"}
    dumped = dep.model_dump_json()
    assert VALUE not in dumped
    assert dep.warnings == env_warnings(["MY_API_KEY"])
    assert "--secret MY_API_KEY=my-api-key" in dep.warnings[0]
    assert json.loads(dumped)["warnings"] == dep.warnings
