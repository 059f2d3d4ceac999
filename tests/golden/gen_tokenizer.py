#!/usr/bin/env python3
"""gen_tokenizer.py — golden token ids for tests/unit/test_tokenizer.c.

Reference implementation: llama.cpp itself, through llama-cpp-python
(Llama(model_path, vocab_only=True).tokenize(bytes, add_bos=..., special=...)).
Nobody here wrote it, so agreeing with it means agreeing with what every
llama.cpp-based server feeds the same model.

Vocabularies:
  * smollm2            the default model's own vocabulary (gpt2 byte-level BPE,
                       pre-tokenizer "smollm").
  * smollm2-<pre>      the same tokens and merges with tokenizer.ggml.pre set to
                       llama-bpe, default, gpt-2 and qwen2, so every
                       pre-tokenizer regex family we support is checked.  The
                       C test rebuilds these GGUFs from the model the same way
                       (copies the tokenizer keys, changes the pre string).
  * spm                a small SentencePiece BPE vocabulary with byte
                       fallback, trained here on synthetic text (see corpus())
                       and written as a vocab-only GGUF
                       (tests/golden/data/tok_spm.gguf, committed; the
                       SentencePiece model tok_spm.model is committed too so
                       regeneration reuses the same vocabulary unless
                       --retrain is given).  For this vocabulary the ids of
                       SentencePiece itself are recorded beside llama.cpp's,
                       and the cases where the two differ are listed in
                       tok_spm_notes.txt.

Output (tests/golden/data/), all plain text so the C test needs no parser:
  tok_<vocab>.tsv     one case per line: FLAGS <TAB> HEX(text) <TAB> ids
                      (space-separated; "-" for none) [<TAB> sentencepiece ids]
                      FLAGS bit 0 = parse_special, bit 1 = add_special.
  tok_<vocab>_meta.txt
                      n_vocab, bos/eos/unk, the EOG id set (llama_vocab_is_eog)
                      and FNV-1a hashes of llama_token_to_piece over blocks of
                      1024 ids (special=true and special=false).

It does not run the C code and is not run by the test suite.

Usage: tests/golden/gen_tokenizer.py [--retrain]   (from the repository root,
with the python of tests/golden/setup-venv.sh)
"""
import ctypes
import os
import random
import sys
import tempfile

import gguf
import llama_cpp
import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "golden", "data")
MODEL = os.environ.get("PPD_TEST_MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
PRE_VARIANTS = ["llama-bpe", "default", "gpt-2", "qwen2"]

F_SPECIAL = 1
F_ADD = 2


# ---------------------------------------------------------------- inputs

def fixed_cases(specials):
    """Hand-written strings: each kind of text the pre-tokenizers treat differently."""
    s = []
    s += ["", " ", "  ", "\t", "\n", "a", "A", "Hello", " Hello", "Hello world", "Hello, world!",
          "The quick brown fox jumps over the lazy dog.",
          "THE QUICK BROWN FOX", "hello\tworld", "multiple   spaces   here"]
    # contractions, both cases (llama3 is case-insensitive there, gpt2 is not)
    s += ["I'm", "don't", "they're", "we've", "she'll", "he'd", "It's", "IT'S", "DON'T", "We'VE",
          "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "''", "' s", "rock 'n' roll",
          "O'Neil's book", "the dog's bone's", "you''re", "'S"]
    # accents and combining marks
    s += ["café", "naïve", "Ångström", "Français", "señor", "Zürich", "e\u0301", "Cafe\u0301 au lait",
          "Ελληνικά γράμματα", "Русский текст", "עברית", "العربية", "हिन्दी", "ไทย", "Tiếng Việt",
          "ǅemal", "ﬁne ﬂow", "straße", "İstanbul", "ı"]
    # CJK
    s += ["你好，世界", "日本語のテキスト", "한국어 문장", "中文 English 混合", "漢字かなカナ",
          "｜全角｜ＡＢＣ１２３", "　", "「引用」"]
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    s += ["👍", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👋🏽", "🇫🇷🇩🇪", "❤️", "I ❤️ NY", "😀😃😄", "a👍b", " 👍 ",
          "🧑🏽‍💻 coding", "©®™", "★☆"]
    # code, tabs, runs of spaces and newlines
    s += ["def f(x):\n\treturn x + 1\n", "int main() {\n    return 0;\n}\n",
          "if (a && b || !c) { x[i] = y->z; }", "#include <stdio.h>\n", "    indented",
          "\t\tdouble tab", "line1\nline2\r\nline3\rline4", "\n\n\n", "\r\n\r\n", "  \n\n  \t",
          "a\n b", "a \nb", "x = {'a': [1, 2, 3]}", "SELECT * FROM t WHERE id = 42;",
          "<html><body><p>Hi</p></body></html>", "https://example.com/path?q=1&r=2#frag",
          "user@example.org", "$ ls -la | grep '.c'", "/* comment */ // other", "a_b-c.d",
          "`code`", "~!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/"]
    for k in (1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 64):
        s += [" " * k, "a" + " " * k + "b", "\n" * k, "x" + "\t" * k]
    # digits of many lengths and number-like things
    for k in range(1, 16):
        s.append("1234567890123456"[:k])
    s += [" 42", "42 ", "3.14159", "1,000,000", "-17", "+1e-9", "0x1F", "v1.2.3", "2024-01-15",
          "12:34:56", "٣٤٥ ٦", "½ ¾", "Ⅻ", "①②", "x²", "abc123def", "a1b2c3", "99 bottles"]
    # whitespace beyond ASCII
    s += ["a\u00a0b", "a\u3000b", "a\u2009b", "a\u0085b", "a\u2028b", "\u00a0\u00a0", "a \u00a0 b",
          "a\u200bb", "a\ufeffb", "a\u000bb\u000cc"]
    # punctuation runs and symbols
    s += ["!!!???", "...", "…", "—", "«quotes»", "“smart” ‘quotes’", "$100", "€50", "a+b=c", "<=>",
          "^_^", "~~~", "|||", "¿Qué?", "¡Hola!"]
    # special tokens, with and without the special flag (added below)
    st, en = specials[0], specials[1]
    s += [st, en, st + "user\nHello" + en + "\n", st + en, st + st, "x" + st + "y",
          " " + st + " ", st[:-1], st[1:], "<" + st, st + ">", st + "system\nYou are helpful." + en,
          "text " + en + " more"]
    for extra in specials[2:]:
        s += [extra, "a" + extra + "b"]
    # a longer mixed paragraph
    s.append(("In 2023, the café served 1,234 croissants — 12% more than before! "
              "Customers said: \"C'est délicieux\" 😋.\n\nNext year: 中文, 日本語 & 한국어?\n") * 3)
    return s


def random_cases(n, seed):
    """Random strings over a pool mixing every character class the regexes distinguish."""
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") +
            list(" " * 12) + list("\n\n\t\r") + list("'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`") +
            list("éàüßñçøÅ") + list("你好世界日本語한국") + ["👍", "😀", "‍", "🏽", "️"] +
            list("٣½Ⅻ²") + ["\u00a0", "\u3000", "\u2009", "\u0301", "\u200b"] +
            ["'s", "'t", "'re", "'ll", "'S", "<|im_start|>", "<|im_end|>", "<s>", "</s>"])
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(pool) for _ in range(k)))
    return out


def byte_cases():
    """Invalid UTF-8 and odd encodings: llama.cpp decodes leniently (U+FFFD per bad byte)."""
    return [b"\xff", b"\xfe\xff", b"abc\x80def", b"\xc3", b"\xc3(", b"a\xe2\x82", b"\xed\xa0\x80",
            b"\xc0\x80", b"a\x00b", b"\xf0\x9f\x98", b"caf\xc3\xa9\xff", b"\x80\x80\x80"]


def all_cases(specials):
    texts = [t.encode("utf-8") for t in fixed_cases(specials) + random_cases(120, 1234)]
    texts += byte_cases()
    cases = []
    for i, t in enumerate(texts):
        cases.append((F_SPECIAL, t))
        # the same text without special-token parsing, for the texts that have any
        # marker in them, and a sample of the rest; add_special on a few
        if b"<" in t or i % 7 == 0:
            cases.append((0, t))
        if i % 11 == 0:
            cases.append((F_SPECIAL | F_ADD, t))
    return cases


# ---------------------------------------------------------------- llama.cpp side

def fnv1a(data, h=0xcbf29ce484222325):
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def llama_meta(llm):
    v = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(v)
    lines = [f"n_vocab {n}",
             f"bos {llama_cpp.llama_vocab_bos(v)}",
             f"eos {llama_cpp.llama_vocab_eos(v)}",
             f"add_bos {int(llama_cpp.llama_vocab_get_add_bos(v))}",
             f"add_eos {int(llama_cpp.llama_vocab_get_add_eos(v))}",
             "eog " + " ".join(str(i) for i in range(n) if llama_cpp.llama_vocab_is_eog(v, i))]
    buf = ctypes.create_string_buffer(4096)
    for special in (1, 0):
        hs = []
        for b0 in range(0, n, 1024):
            h = 0xcbf29ce484222325
            for i in range(b0, min(n, b0 + 1024)):
                k = llama_cpp.llama_token_to_piece(v, i, buf, len(buf), 0, bool(special))
                assert k >= 0
                h = fnv1a(k.to_bytes(4, "little") + buf.raw[:k], h)
            hs.append("%016x" % h)
        lines.append(f"pieces{special} " + " ".join(hs))
    return "\n".join(lines) + "\n"


def tokenize_all(llm, cases):
    rows = []
    for flags, t in cases:
        ids = llm.tokenize(t, add_bos=bool(flags & F_ADD), special=bool(flags & F_SPECIAL))
        rows.append((flags, t, ids))
    return rows


def write_tsv(path, header, rows, extra=None):
    with open(path, "w") as f:
        f.write(header)
        for k, (flags, t, ids) in enumerate(rows):
            line = f"{flags}\t{t.hex() or '-'}\t{' '.join(map(str, ids)) or '-'}"
            if extra is not None:
                line += "\t" + (" ".join(map(str, extra[k])) or "-")
            f.write(line + "\n")


def variant_gguf(src, pre, dst):
    """A vocab-only copy of the model's tokenizer with another pre-tokenizer name."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "llama")
    add_dummy_hparams(w, len(r.fields["tokenizer.ggml.tokens"].data))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    f = r.fields["tokenizer.ggml.tokens"]
    w.add_token_list([bytes(f.parts[i]) for i in f.data])
    f = r.fields["tokenizer.ggml.token_type"]
    w.add_token_types([int(f.parts[i][0]) for i in f.data])
    f = r.fields["tokenizer.ggml.merges"]
    w.add_token_merges([bytes(f.parts[i]) for i in f.data])
    for key, fn in (("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                    ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                    ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id),
                    ("tokenizer.ggml.padding_token_id", w.add_pad_token_id)):
        if key in r.fields:
            fn(int(r.fields[key].parts[-1][0]))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_dummy_hparams(w, n_vocab):
    # vocab_only loading still reads the architecture's hyper-parameters
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)


# ---------------------------------------------------------------- SentencePiece vocab

WORDS = """the of and to in is was for on that with as by at from it this be are or an have
not which but had his they you were their one all we can her has there been if more when will
would who so no out up into do than about time only other new some could what these two may
first then any like over such our man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came
right used take three system house small number always part model token language server data
value river water music city garden window morning kitchen winter summer yellow green purple
computer program function return variable string integer float memory thread queue cache""".split()
ACCENTED = "café naïve résumé Zürich señor Ångström façade déjà über crème brûlée piñata".split()
CJK = ["你好", "世界", "中文", "日本語", "テキスト", "한국어", "문장"]


def corpus(path, n_lines, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_lines):
            kind = rng.random()
            if kind < 0.70:
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
                if rng.random() < 0.2:
                    words.insert(rng.randrange(len(words)), rng.choice(ACCENTED))
                if rng.random() < 0.2:
                    words.insert(rng.randrange(len(words)), str(rng.randint(0, 100000)))
                line = " ".join(words)
                line = line[0].upper() + line[1:] + rng.choice([".", ".", "!", "?", ",", ":"])
            elif kind < 0.85:
                line = "    " * rng.randint(0, 2) + rng.choice(
                    ["def {0}(x):", "return {0} + 1", "int {0} = 0;", "for (i = 0; i < {0}; i++)",
                     "if ({0} == NULL) {{", "print({0})", "{0}.append(x)"]).format(rng.choice(WORDS))
            elif kind < 0.95:
                line = " ".join(rng.choice(CJK) for _ in range(rng.randint(2, 6)))
            else:
                line = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 8))) for _ in range(5))
            f.write(line + "\n")


def train_spm(prefix, workdir):
    text = os.path.join(workdir, "corpus.txt")
    corpus(text, 20000, 42)
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, model_type="bpe", vocab_size=2000,
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        split_digits=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], control_symbols=["<ctrl>"],
        num_threads=1, minloglevel=2)


def spm_gguf(model_path, dst):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = sp.vocab_size()
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        t = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        elif tokens[-1] in (b"<|im_start|>", b"<|im_end|>"):
            t = gguf.TokenType.USER_DEFINED
        types.append(int(t))
    w = gguf.GGUFWriter(dst, "llama")
    w.add_name("ppd-test-spm")
    add_dummy_hparams(w, n)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([float(x) for x in scores])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sp


def main():
    retrain = "--retrain" in sys.argv[1:]
    os.makedirs(DATA, exist_ok=True)
    header = ("# generated by tests/golden/gen_tokenizer.py with llama-cpp-python %s; "
              "FLAGS(1=special,2=add_special) HEX(text) ids\n" % llama_cpp.__version__)

    # ---- the default model and its pre-tokenizer variants
    llm = llama_cpp.Llama(model_path=MODEL, vocab_only=True, verbose=False)
    cases = all_cases(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>"])
    rows = tokenize_all(llm, cases)
    write_tsv(os.path.join(DATA, "tok_smollm2.tsv"), header, rows)
    with open(os.path.join(DATA, "tok_smollm2_meta.txt"), "w") as f:
        f.write(llama_meta(llm))
    print(f"smollm2: {len(rows)} cases")
    del llm
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_VARIANTS:
            path = os.path.join(tmp, f"v-{pre}.gguf")
            variant_gguf(MODEL, pre, path)
            vl = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            vrows = tokenize_all(vl, cases)
            write_tsv(os.path.join(DATA, f"tok_smollm2-{pre}.tsv"), header, vrows)
            ndiff = sum(1 for a, b in zip(rows, vrows) if a[2] != b[2])
            print(f"smollm2-{pre}: {len(vrows)} cases, {ndiff} differ from smollm")
            del vl

        # ---- SentencePiece vocabulary
        model = os.path.join(DATA, "tok_spm.model")
        if retrain or not os.path.exists(model):
            train_spm(os.path.join(tmp, "spm"), tmp)
            with open(os.path.join(tmp, "spm.model"), "rb") as src, open(model, "wb") as dst:
                dst.write(src.read())
        gpath = os.path.join(DATA, "tok_spm.gguf")
        sp = spm_gguf(model, gpath)
    sl = llama_cpp.Llama(model_path=gpath, vocab_only=True, verbose=False)
    scases = all_cases(["<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<ctrl>"])
    srows = tokenize_all(sl, scases)
    sp_ids, notes = [], []
    for flags, t, ids in srows:
        try:
            s = t.decode("utf-8")
        except UnicodeDecodeError:
            sp_ids.append([])
            continue
        ref = sp.encode(s)
        if flags & F_ADD:
            ref = [sp.bos_id()] + ref
        sp_ids.append(ref)
        if ref != ids:
            notes.append(f"flags={flags} text={s!r}\n  llama.cpp:     {ids}\n  sentencepiece: {ref}")
    write_tsv(os.path.join(DATA, "tok_spm.tsv"),
              header.rstrip("\n") + " [sentencepiece ids, '-' for invalid UTF-8]\n", srows, sp_ids)
    with open(os.path.join(DATA, "tok_spm_meta.txt"), "w") as f:
        f.write(llama_meta(sl))
    with open(os.path.join(DATA, "tok_spm_notes.txt"), "w") as f:
        f.write("Cases where SentencePiece %s and llama.cpp (llama-cpp-python %s) tokenize the SPM test\n"
                "vocabulary differently (the C tokenizer follows llama.cpp).  Expected differences:\n"
                "llama.cpp splits special/user-defined tokens out first and prefixes a space after\n"
                "each of them; SentencePiece never parses control tokens (<s>, </s>, <ctrl>) in text.\n\n"
                % (spm.__version__, llama_cpp.__version__))
        f.write("\n".join(notes) + ("\n" if notes else "(none)\n"))
    print(f"spm: {len(srows)} cases, {len(notes)} differ from sentencepiece, "
          f"{os.path.getsize(gpath)} bytes of GGUF")


if __name__ == "__main__":
    main()
