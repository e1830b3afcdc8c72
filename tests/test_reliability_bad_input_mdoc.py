"""Bad-input corpus for SerialEM .mdoc files given to `cryocloud convert STACK OUT --mdoc MDOC`: section
numbers ([ZValue = n], the stack index of the image) that do not number the images 0..N-1 once each, and
lines or values mdocfile could not read. Each case must give exit 2 and one error line naming the mdoc,
the field and the section (see tests/badinput.py for the rest of what is checked).
"""

from __future__ import annotations

import numpy as np
import pytest

from badinput import MDOC_HEADER, Case, check_bad_input, mdoc_section, mrc_file, text_file

pytestmark = pytest.mark.slow  # the bad-input corpus: one CLI run per case


def convert_with_mdoc(c: Case, n_images: int, mdoc_text: str) -> list[str]:
    """CLI arguments converting an `n_images` stack (images differ) with the given mdoc text."""
    stack = mrc_file(c, "stack.mrc", np.arange(n_images, dtype=np.float32)[:, None, None] + np.zeros((n_images, 16, 16), np.float32))
    mdoc = text_file(c, "stack.mrc.mdoc", mdoc_text)
    return ["convert", stack, str(c.out / "ts.zarr"), "--mdoc", mdoc]


def mdoc_duplicate_zvalue(c: Case):
    text = MDOC_HEADER + mdoc_section(0, "-10") + mdoc_section(1, "0") + mdoc_section(1, "10")
    return convert_with_mdoc(c, 3, text), ["stack.mrc.mdoc", "field 'ZValue'", "section [ZValue = 1]", "listed 2 times"]


def mdoc_zvalue_gap(c: Case):
    text = MDOC_HEADER + mdoc_section(0, "-10") + mdoc_section(1, "0") + mdoc_section(3, "10")
    return convert_with_mdoc(c, 3, text), ["stack.mrc.mdoc", "field 'ZValue'", "section [ZValue = 3]", "no section has ZValue = 2"]


def mdoc_zvalue_beyond_stack(c: Case):
    text = MDOC_HEADER + "".join(mdoc_section(z, str(10 * z)) for z in range(4))
    return convert_with_mdoc(c, 3, text), ["stack.mrc.mdoc", "field 'ZValue'", "section [ZValue = 3]", "beyond the stack", "(3, 16, 16)"]


def mdoc_negative_zvalue(c: Case):
    text = MDOC_HEADER + mdoc_section(-1, "-10") + mdoc_section(0, "0") + mdoc_section(1, "10")
    return convert_with_mdoc(c, 3, text), ["stack.mrc.mdoc", "field 'ZValue'", "section [ZValue = -1]", "negative"]


def mdoc_zvalue_not_an_integer(c: Case):
    text = MDOC_HEADER + mdoc_section(0, "-10") + "[ZValue = one]\nTiltAngle = 10\nExposureDose = 3.0\n\n"
    return convert_with_mdoc(c, 2, text), ["stack.mrc.mdoc", "field 'ZValue'", "section [ZValue = one]", "expected an integer"]


def mdoc_zvalue_and_frameset_mixed(c: Case):
    text = MDOC_HEADER + mdoc_section(0, "-10") + "[FrameSet = 1]\nTiltAngle = 10\nExposureDose = 3.0\n\n"
    return convert_with_mdoc(c, 2, text), ["stack.mrc.mdoc", "field 'ZValue'", "mixes [ZValue = n] and [FrameSet = n]"]


def mdoc_section_line_without_equals(c: Case):
    """A line mdocfile would skip without a word: the dose of section 1 would be lost."""
    text = MDOC_HEADER + mdoc_section(0, "-10") + "[ZValue = 1]\nTiltAngle = 10\nExposureDose 3.0\n\n"
    return convert_with_mdoc(c, 2, text), ["stack.mrc.mdoc", "field 'line'", "line 11", "'ExposureDose 3.0'"]


CASES = [
    mdoc_duplicate_zvalue, mdoc_zvalue_gap, mdoc_zvalue_beyond_stack, mdoc_negative_zvalue, mdoc_zvalue_not_an_integer,
    mdoc_zvalue_and_frameset_mixed, mdoc_section_line_without_equals,
]


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_bad_input_is_a_clear_user_error(make, tmp_path, capsys, request, small_cluster):
    check_bad_input(make, tmp_path, capsys, request)
