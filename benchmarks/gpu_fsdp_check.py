"""The shipped FSDP2 config for real through DistillationTrainer on a GPU; writes OUT/NAME.json:

    accelerate launch --config_file recipes/configs/accelerate_fsdp.yaml --num_processes 1 \
        benchmarks/gpu_fsdp_check.py OUT NAME
"""

import json
import os
import sys
import traceback

import torch
import transformers as tf
from provenance import provenance  # benchmarks/ is on sys.path: this script's folder
from safetensors.torch import load_file

from hf_distill import DistillationArguments, DistillationTrainer, init_student_from_teacher

out, name = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "run"
report = {"provenance": provenance(), "name": name, "torch": torch.__version__, "transformers": tf.__version__}
try:
    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(96)]
    tok = tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    cfg = tf.BertConfig(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=3,
    )
    teacher = tf.BertForSequenceClassification(cfg)
    student = init_student_from_teacher(teacher, num_layers=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 101, (32, 12), generator=g)
    data = [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(12, dtype=torch.long),
            "labels": int((ids[i] % 2 == 0).sum()) % 3,
        }
        for i in range(32)
    ]
    save_dir = os.path.join(out, name)
    args = DistillationArguments(
        output_dir=os.path.join(out, name + "_ckpt"),
        report_to=[],
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
        hidden_weight=1.0,
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(student, teacher, args, train_dataset=data, processing_class=tok)
    report["is_fsdp_enabled"] = trainer.is_fsdp_enabled
    plugin = trainer.accelerator.state.fsdp_plugin
    report["wrap_classes"] = plugin.transformer_cls_names_to_wrap
    report["state_dict_type"] = str(plugin.state_dict_type)
    t = trainer.teacher
    report["teacher_dtensor"] = all(type(p).__name__ == "DTensor" for p in t.parameters())
    report["teacher_device"] = str(next(t.parameters()).device)
    report["teacher_requires_grad"] = any(p.requires_grad for p in t.parameters())
    trainer.train()
    report["student_fsdp_units"] = sorted(
        {type(m).__name__ for m in trainer.model.modules() if type(m).__name__.startswith("FSDP")}
    )
    opt_ids = {id(p) for g_ in trainer.optimizer.param_groups for p in g_["params"]}
    report["teacher_in_optimizer"] = any(id(p) in opt_ids for p in t.parameters())
    report["checkpoint_files"] = sorted(os.listdir(os.path.join(args.output_dir, "checkpoint-3")))
    trainer.save_model(save_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        report["saved_files"] = sorted(os.listdir(save_dir))
        saved = load_file(os.path.join(save_dir, "model.safetensors"))
        loaded = tf.AutoModelForSequenceClassification.from_pretrained(save_dir)
        report["saved_keys_match_student"] = sorted(saved) == sorted(loaded.state_dict())
        report["saved_n_tensors"] = len(saved)
        report["student_trained"] = not torch.equal(
            saved["bert.encoder.layer.0.attention.self.query.weight"].float(),
            teacher.state_dict()["bert.encoder.layer.1.attention.self.query.weight"].full_tensor().float().cpu()
            if hasattr(teacher.state_dict()["bert.encoder.layer.1.attention.self.query.weight"], "full_tensor")
            else teacher.state_dict()["bert.encoder.layer.1.attention.self.query.weight"].float().cpu(),
        )
    report["ok"] = True
except Exception:
    report["ok"] = False
    report["error"] = traceback.format_exc()[-3000:]
if int(os.environ.get("RANK", "0")) == 0:
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
print(json.dumps(report, default=str)[:3000])
