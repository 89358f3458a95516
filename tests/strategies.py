"""Hypothesis strategies shared by the property tests of the decoders."""

from __future__ import annotations

from hypothesis import strategies as st

#: any JSON value: scalars, empty containers, and non-empty ones nested a few levels (every
#: expansion draws from ``children``; hypothesis warns about a recursion whose draws happened
#: not to use it, and warnings fail the suite)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.just([])
    | st.just({}),
    lambda children: (
        st.lists(children, min_size=1, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, min_size=1, max_size=4)
    ),
    max_leaves=20,
)
