"""Side-by-side benchmarks against peers: ``python -m benchmarks NAME [--quick]``.

Each benchmark is a module ``benchmarks/<name>.py`` (``-`` in NAME becomes ``_``) with
``run(quick: bool) -> dict``. The dict holds at least ``name``, ``ours_s``, ``peer``, ``peer_s``
and ``ratio`` (= peer_s / ours_s; > 1 means cryocloud is faster), plus accuracy figures showing
that both computed the same thing. The runner prints it as ONE JSON object on the last line of
stdout; progress and logs go to stderr.
"""

REQUIRED_KEYS = ("name", "ours_s", "peer", "peer_s", "ratio")
