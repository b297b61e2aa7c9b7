"""v1 on forget[:3], v2 on forget[3:]; request-1 MA in v2 vs never-seen, variants."""

import sys, tempfile, dataclasses
from pathlib import Path
import torch

sys.path.insert(0, "/work/main")
from tests.conftest import fast_config
from core.worlds.pii import build_world, tiny_spec
from core.modeling import load_model
from core.pipeline import run_forget, encode_set
from core.metrics import evaluate_set
import core.losses as L
from peft import PeftModel
from transformers import AutoModelForCausalLM

spec = tiny_spec()
w = build_world(Path("/work/main/.cache/tests") / f"tiny-world-{spec.key()}", spec, log=lambda m: None)
loaded = load_model(w.model_dir, device="cpu")
variant = sys.argv[1]
kw = dict(a.split("=") for a in sys.argv[2:])
kw = {k: (float(v) if "." in v else int(v)) for k, v in kw.items()}
tmp = Path(tempfile.mkdtemp())
cfg = fast_config(**kw)
v1 = run_forget(loaded, w.forget[:3], w.retain, w.holdout, cfg, out_dir=tmp / "v1")
if variant == "prev":
    import core.unlearn as U

    for o in (U.OBJECTIVES if hasattr(U, "OBJECTIVES") else L.OBJECTIVES).values():
        pass
    L.OBJECTIVES["ctd"] = dataclasses.replace(L.OBJECTIVES["ctd"], anchors_reference=False)
v2 = run_forget(loaded, w.forget[3:], w.retain, w.holdout, cfg, out_dir=tmp / "v2", previous_adapter=v1.adapter_dir)
fresh = AutoModelForCausalLM.from_pretrained(str(w.model_dir), attn_implementation="eager").eval()
m = PeftModel.from_pretrained(fresh, str(v2.adapter_dir)).eval()
ev = lambda recs: evaluate_set(m, encode_set(loaded.tokenizer, recs), torch.device("cpu")).metrics
r1, r2, ho, re = ev(w.forget[:3]), ev(w.forget[3:]), ev(w.holdout), ev(w.retain[:60])
print(
    variant,
    kw,
    "v1",
    v1.outcome,
    v1.report["steps"],
    "v1 r1 ma",
    round(v1.report["after"]["forget"]["ma"], 3),
    "v1 holdout",
    round(v1.report["after"]["holdout"]["ma"], 3),
    "| v2",
    v2.outcome,
    v2.report["steps"],
    "r1 ma",
    round(r1.ma, 3),
    "r2 ma",
    round(r2.ma, 3),
    "holdout",
    round(ho.ma, 3),
    "retain ma",
    round(re.ma, 3),
    "retain ex",
    round(re.extraction_short, 3),
)
