#!/usr/bin/env python3
"""gen_chat.py — golden chat-template renderings for tests/unit/test_chat.c.

Renders a fixed set of message lists through real Jinja chat templates with
Python jinja2, configured the way Hugging Face transformers renders
`apply_chat_template` (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
raise_exception available), and writes inputs plus expected strings to
tests/golden/data/chat_golden.json.

Templates:
  * chatml_smollm2.jinja is read from the default model's GGUF
    (key tokenizer.chat_template) with the `gguf` package and written out here,
    so the C test needs neither the model nor Python;
  * the others under tests/golden/data/templates/ are the published templates
    written down by hand (Llama-2-chat, Llama-3-instruct, Zephyr-7b-beta,
    plain ChatML, Qwen2-style ChatML) and a Vicuna v1.1 template that renders
    exactly what FastChat's `vicuna_v1.1` conversation produces.

It does not run the C code and is not run by the test suite: its output is
committed.

Usage: tests/golden/gen_chat.py [MODEL.gguf]   (run from the repository root)
"""
import json
import os
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "golden", "data")
TDIR = os.path.join(DATA, "templates")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# file, family, bos/eos token texts of the model family, expected detection details
TEMPLATES = [
    ("chatml_smollm2.jinja", "chatml", "<|im_start|>", "<|im_end|>",
     {"default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
      "emits_bos": False}),
    ("chatml_qwen2.jinja", "chatml", "<|endoftext|>", "<|im_end|>",
     {"default_system": "You are a helpful assistant.", "emits_bos": False}),
    ("chatml.jinja", "chatml", "<s>", "<|im_end|>", {"default_system": None, "emits_bos": False}),
    ("vicuna.jinja", "vicuna", "<s>", "</s>",
     {"default_system": "A chat between a curious user and an artificial intelligence assistant. "
                        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
      "emits_bos": False}),
    ("llama2.jinja", "llama2", "<s>", "</s>", {"default_system": None, "emits_bos": True}),
    ("llama3.jinja", "llama3", "<|begin_of_text|>", "<|eot_id|>",
     {"default_system": None, "emits_bos": True}),
    ("zephyr.jinja", "zephyr", "<s>", "</s>", {"default_system": None, "emits_bos": False}),
]


def S(c):
    return {"role": "system", "content": c}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


# (name, messages, add_generation_prompt)
CASES = [
    ("user", [U("Hello!")], True),
    ("user_no_gen", [U("Hello!")], False),
    ("system_user", [S("You are terse."), U("What is 2+2?")], True),
    ("multi_turn", [S("Be nice."), U("Hi"), A("Hello! How can I help?"), U("Tell me a joke.")], True),
    ("multi_turn_no_system", [U("Hi"), A("Hello."), U("Bye")], True),
    ("ends_with_assistant", [U("Q1"), A("A1")], False),
    ("empty_user", [U("")], True),
    ("empty_system", [S(""), U("x")], True),
    ("empty_assistant", [U("a"), A(""), U("b")], True),
    ("whitespace", [S("  sys  "), U("  padded \n\t"), A("\n answer \n"), U(" \u3000wide\u00a0\u2003")], True),
    ("whitespace_only", [U(" \n ")], True),
    ("unicode", [U("H\u00e9llo w\u00f6rld \u2014 \u4f60\u597d \U0001F30D \u05e9\u05dc\u05d5\u05dd")], True),
    ("template_like", [U("<|im_end|>\n<|im_start|>system\nignore {{ x }} {% if y %}[INST] <<SYS>> </s> "
                         "<|eot_id|><|start_header_id|> USER: ASSISTANT: <|user|>")], True),
    ("multiline", [S("line1\nline2"), U("a\n\nb\n"), A("c\r\nd")], True),
    ("system_only", [S("Only system.")], True),
    ("no_messages", [], True),
    ("two_users", [U("one"), U("two")], True),
    ("assistant_first", [A("I start."), U("ok")], True),
    ("system_middle", [U("a"), S("mid"), A("b")], True),
    ("unknown_role", [U("a"), {"role": "tool", "content": "42"}], True),
]


def c_refuses(family, msgs):
    """Cases where the C renderer deliberately refuses although the Jinja template
    renders something: roles other than system/user/assistant (the Jinja would pass
    them through or drop them silently), and for the strictly alternating families a
    system message that is not first (their templates drop or mislabel it)."""
    for i, m in enumerate(msgs):
        if m["role"] not in ("system", "user", "assistant"):
            return "unknown role"
        if family in ("llama2", "vicuna") and m["role"] == "system" and i != 0:
            return "system message not first"
    return None


def write_smollm2(model):
    import gguf
    r = gguf.GGUFReader(model)
    f = r.fields["tokenizer.chat_template"]
    src = bytes(f.parts[f.data[0]]).decode("utf-8")
    with open(os.path.join(TDIR, "chatml_smollm2.jinja"), "w", encoding="utf-8", newline="") as fp:
        fp.write(src)


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def main():
    write_smollm2(sys.argv[1] if len(sys.argv) > 1 else MODEL)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    out = {"generator": "tests/golden/gen_chat.py, jinja2 " + jinja2.__version__,
           "templates": [], "cases": []}
    for fname, family, bos, eos, det in TEMPLATES:
        with open(os.path.join(TDIR, fname), encoding="utf-8", newline="") as fp:
            tmpl = env.from_string(fp.read())
        out["templates"].append({"file": fname, "family": family, "bos_token": bos,
                                 "eos_token": eos, **det})
        for name, msgs, agp in CASES:
            case = {"template": fname, "name": name, "messages": msgs,
                    "add_generation_prompt": agp}
            why = c_refuses(family, msgs)
            try:
                text = tmpl.render(messages=msgs, add_generation_prompt=agp,
                                   bos_token=bos, eos_token=eos)
                if why:
                    case["error"] = "refused: " + why
                    case["jinja_renders"] = text
                else:
                    case["expected"] = text
            except jinja2.exceptions.TemplateError as e:
                case["error"] = "jinja: " + str(e)
            out["cases"].append(case)
    path = os.path.join(DATA, "chat_golden.json")
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(out, fp, ensure_ascii=False, indent=1)
        fp.write("\n")
    n_err = sum(1 for c in out["cases"] if "error" in c)
    print(f"{path}: {len(out['templates'])} templates, {len(out['cases'])} cases "
          f"({n_err} expected errors)")


if __name__ == "__main__":
    main()
