"""Two host processes: disjoint shares whose union is the epoch, also with worker processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests._data_helpers import WordTokenizer
from whisper_llada_jax.config import load_model_config
from whisper_llada_jax.data.config import DataConfig
from whisper_llada_jax.data.pipeline import build_iterator
from whisper_llada_jax.data.sources import SyntheticSource

ROOT = Path(__file__).resolve().parent.parent
N = 23  # not a multiple of 2 x batch: the shares differ in size

HOST = textwrap.dedent("""
    import dataclasses, json, sys
    from tests._data_helpers import WordTokenizer
    from whisper_llada_jax.config import load_model_config
    from whisper_llada_jax.data.config import DataConfig
    from whisper_llada_jax.data.pipeline import build_iterator

    def ids(it):
        out = [[i for i, v in zip(b["ids"], b["valid"]) if v] for b in it]
        it.close()
        return out

    if __name__ == "__main__":
        index, count, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
        model = load_model_config("tiny")
        cfg = DataConfig(train_source=f"synthetic:n={n},seed=4,max_s=1.5", eval_source=f"synthetic:n={n},seed=4,max_s=1.5",
                         batch_size=4, num_epochs=1, num_workers=1, read_threads=1)
        kw = dict(shard_index=index, shard_count=count, seed=11)
        # one worker process for the train split (the costly start paid once per host)
        print(json.dumps({"train": ids(build_iterator(cfg, model, WordTokenizer(), split="train", **kw)),
                          "eval": ids(build_iterator(dataclasses.replace(cfg, num_workers=0), model,
                                                     WordTokenizer(), split="eval", **kw))}))
""")


def test_two_hosts_see_disjoint_shares_covering_the_epoch(tmp_path):
    script = tmp_path / "host.py"
    script.write_text(HOST)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(i), "2", str(N)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    everything = sorted(SyntheticSource(n=N, seed=4)[i]["id"] for i in range(N))
    for split in ("train", "eval"):
        a = [i for b in outs[0][split] for i in b]
        b = [i for b in outs[1][split] for i in b]
        assert not set(a) & set(b)
        assert sorted(a + b) == everything
        assert len(a) == 12 and len(b) == 11
    # eval: both hosts step the same number of times (the short share gets a padding batch row)
    assert len(outs[0]["eval"]) == len(outs[1]["eval"]) == 3
    # a worker process gives exactly what the in-process pipeline gives
    cfg = DataConfig(train_source=f"synthetic:n={N},seed=4,max_s=1.5", batch_size=4, num_epochs=1)
    local = build_iterator(cfg, load_model_config("tiny"), WordTokenizer(), split="train",
                           shard_index=1, shard_count=2, seed=11)
    assert [[i for i, v in zip(b["ids"], b["valid"]) if v] for b in local] == outs[1]["train"]
