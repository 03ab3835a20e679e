"""benchmarks/decode_cost.py on tiny shapes: the head-on-block forward saves exactly the head's
FLOPs on the rows it skips, and no cached forward concatenates anything cache-sized."""

import json

from benchmarks import decode_cost


def test_tiny_cost_report(tmp_path, capsys):
    out = tmp_path / "cost.json"
    decode_cost.main(["--tiny", "--json", str(out), "--prefix", "24", "--gen-len", "16", "--block", "4",
                      "--query-slots", "4", "--max-new", "8"])
    rows = {r["forward"]: r for r in json.loads(out.read_text())}
    assert "| autoregressive step |" in capsys.readouterr().out
    cfg = decode_cost.TINY
    saved = rows["exact, head on all R"]["flops"] - rows["exact semi-AR, head on block"]["flops"]
    head = 2 * (16 - 4) * cfg.d_model * cfg.vocab_size  # the skipped rows' V x D matmul
    assert abs(saved - head) <= 0.05 * head, (saved, head)
    # what the cached forwards still concatenate (RoPE's rotate-half) is less than the old code's
    # one concatenation of the whole cache per layer (k and v, bf16)
    cache = lambda slots, kv_heads: 2 * slots * kv_heads * cfg.head_dim * 2 * cfg.n_layers
    limits = {"prefix cache hit (R slots)": cache(24 + 16, 4), "dual cache hit (one block)": cache(24 + 16, 4),
              "length prior, later forward": cache(24 + 16, 4), "autoregressive step": cache(24 + 8, 2)}
    for name, limit in limits.items():
        assert rows[name]["concatenated_bytes"] < limit, (name, rows[name], limit)
