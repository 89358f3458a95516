"""Hypothesis strategies shared by the property tests of the decoders."""

from __future__ import annotations

from hypothesis import strategies as st


def _containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # a named function, not a lambda over several lines: hypothesis checks that ``extend``
    # uses its argument by reading its source, which it cannot do for such a lambda, and the
    # warning it then gives fails the suite
    return st.lists(children, min_size=1, max_size=4) | st.dictionaries(
        st.text(max_size=10), children, min_size=1, max_size=4
    )


#: any JSON value: scalars, empty containers, and non-empty ones nested a few levels
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.just([])
    | st.just({}),
    _containers,
    max_leaves=20,
)
