/*
 * data/spm.cc: the C API of data/spm.h over libsentencepiece. The only C++ file of the project;
 * everything that crosses into C is plain data, and no exception escapes (each entry point
 * catches everything and reports it the C way: NULL, -1 or a message).
 *
 * Id space (T5): the model's pieces 0 .. P-1 exactly as SentencePiece numbers them (pad 0,
 * eos 1, unk 2), then 100 sentinels <extra_id_k> = P + 99 - k, then unused rows up to the
 * embedding size rounded to a multiple of 128.
 */
#include <sentencepiece_processor.h>  // sentencepiece::SentencePieceProcessor, util::Status

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "data/spm.h"
#include "common/util.h"
}

struct SpmTokenizer {
    sentencepiece::SentencePieceProcessor sp;
    int pieces;      /* P */
    int vocab;       /* P + SPM_NUM_SENTINELS */
    int model_vocab; /* vocab rounded up to a multiple of 128 */
};

/* The checks that make a model usable with T5 ids. Returns an empty string if fine, else why. */
static std::string check_t5_layout_(const sentencepiece::SentencePieceProcessor &sp) {
    char buf[512];
    int P = sp.GetPieceSize();
    if (P < 4) {
        snprintf(buf, sizeof buf, "has only %d pieces (need pad, eos, unk and at least one more)", P);
        return buf;
    }
    if (sp.pad_id() != 0 || sp.eos_id() != 1 || sp.unk_id() != 2) {
        snprintf(buf, sizeof buf,
                 "has pad_id=%d eos_id=%d unk_id=%d but T5 needs pad=0 eos=1 unk=2 "
                 "(HINT: train with spm_train --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1)",
                 sp.pad_id(), sp.eos_id(), sp.unk_id());
        return buf;
    }
    /* Sentinels are appended after the pieces; a model that already holds them would give
     * one string two ids. PieceToId returns unk for a piece the model lacks. */
    int s0 = sp.PieceToId("<extra_id_0>");
    if (s0 != sp.unk_id()) {
        snprintf(buf, sizeof buf,
                 "already contains the piece <extra_id_0> (id %d); T5 sentinels are added after "
                 "the model's pieces, so the model must not define them", s0);
        return buf;
    }
    return "";
}

/* Load a SentencePiece model and check it follows the T5 layout (pad 0, eos 1, unk 2, no
 * <extra_id_*> pieces of its own). On failure NULL is returned, nothing is leaked, and err
 * holds a message naming model_path and the reason. */
extern "C" SpmTokenizer *spm_open(const char *model_path, char *err, size_t errlen) {
    if (!model_path) {
        set_error(err, errlen, "spm_open: model path is NULL");
        return nullptr;
    }
    SpmTokenizer *t = nullptr;
    try {
        t = new SpmTokenizer();
        sentencepiece::util::Status st = t->sp.Load(model_path);
        if (!st.ok()) {
            set_error(err, errlen,
                     "cannot load SentencePiece model '%s': %s (HINT: pass --spm with the path "
                     "of a spiece.model file, e.g. data/sample/spiece.model)",
                     model_path, st.ToString().c_str());
            delete t;
            return nullptr;
        }
        std::string why = check_t5_layout_(t->sp);
        if (!why.empty()) {
            set_error(err, errlen, "SentencePiece model '%s' %s", model_path, why.c_str());
            delete t;
            return nullptr;
        }
        t->pieces = t->sp.GetPieceSize();
        t->vocab = t->pieces + SPM_NUM_SENTINELS;
        t->model_vocab = (t->vocab + 127) / 128 * 128;
        return t;
    } catch (const std::exception &e) {
        set_error(err, errlen, "cannot load SentencePiece model '%s': %s", model_path, e.what());
    } catch (...) {
        set_error(err, errlen, "cannot load SentencePiece model '%s': unknown C++ exception",
                 model_path);
    }
    delete t;
    return nullptr;
}

/* Free t; NULL is fine. */
extern "C" void spm_close(SpmTokenizer *t) { delete t; }

extern "C" int spm_piece_count(const SpmTokenizer *t) { return t->pieces; }
extern "C" int spm_vocab_size(const SpmTokenizer *t) { return t->vocab; }
extern "C" int spm_model_vocab_size(const SpmTokenizer *t) { return t->model_vocab; }

/* Encode len bytes of UTF-8 text exactly as `spm_encode --output_format=id` encodes one line
 * (the model's normalizer, then unigram/BPE segmentation; no BOS/EOS). *ids and *cap are grown
 * with realloc as needed; on failure (-1) they still describe a valid buffer the caller owns.
 * Thread-safe for distinct output buffers: SentencePieceProcessor::Encode is const. */
extern "C" long spm_encode(const SpmTokenizer *t, const char *text, size_t len, int32_t **ids,
                           size_t *cap) {
    if (!t || !ids || !cap || (!text && len > 0)) return -1;
    try {
        std::vector<int> out;
        sentencepiece::util::Status st =
            t->sp.Encode(absl::string_view(text ? text : "", len), &out);
        if (!st.ok()) return -1;
        size_t n = out.size();
        if (n > *cap || !*ids) {
            size_t want = *cap ? *cap : 256;
            while (want < n) want *= 2;
            int32_t *p = (int32_t *)realloc(*ids, want * sizeof(int32_t));
            if (!p) return -1;
            *ids = p;
            *cap = want;
        }
        for (size_t i = 0; i < n; i++) (*ids)[i] = (int32_t)out[i];
        return (long)n;
    } catch (...) {
        return -1;
    }
}

/* The string of one id beyond the model's pieces or outside the id space. */
static void special_piece_(const SpmTokenizer *t, int32_t id, char *buf, size_t buflen) {
    if (id >= t->pieces && id < t->vocab)
        snprintf(buf, buflen, "<extra_id_%d>", t->vocab - 1 - id);
    else if (id >= t->vocab)
        snprintf(buf, buflen, "<unused_%d>", id - t->vocab);
    else
        snprintf(buf, buflen, "<invalid_%d>", id);
}

/* Write the piece of id into buf (truncated to buflen-1 bytes, always NUL-terminated when
 * buflen > 0): the model's piece string for 0..P-1 ("<pad>", "</s>", "<unk>", "▁the", ...),
 * "<extra_id_k>" for sentinels, "<unused_N>" for ids >= P+100, "<invalid_N>" for negatives. */
extern "C" void spm_id_to_piece(const SpmTokenizer *t, int32_t id, char *buf, size_t buflen) {
    if (!buf || buflen == 0) return;
    buf[0] = '\0';
    if (id >= 0 && id < t->pieces) {
        try {
            const std::string &s = t->sp.IdToPiece(id);
            snprintf(buf, buflen, "%s", s.c_str());
        } catch (...) {
            snprintf(buf, buflen, "<invalid_%d>", id);
        }
        return;
    }
    special_piece_(t, id, buf, buflen);
}

/* Decode ids to text. Runs of ordinary pieces go through SentencePiece's decoder (which undoes
 * the ▁ word marks); control ids (pad, eos), sentinels and unused ids are written as their piece
 * strings ("<pad>", "</s>", "<extra_id_0>"), so nothing is silently dropped. A run that starts
 * a new word after such a special string gets its space back ("a<extra_id_0> b").
 * Returns a malloc'ed NUL-terminated string the caller frees; aborts only if out of memory. */
extern "C" char *spm_decode(const SpmTokenizer *t, const int32_t *ids, size_t n) {
    static const char kWordMark[] = "\xe2\x96\x81"; /* U+2581, SentencePiece's space */
    try {
        std::string out;
        std::vector<int> run;
        auto flush = [&]() {
            if (run.empty()) return;
            std::string piece0 = t->sp.IdToPiece(run[0]);
            std::string text;
            if (!t->sp.Decode(run, &text).ok()) {
                /* Cannot happen for ids in range; keep the raw pieces rather than lose text. */
                text.clear();
                for (int id : run) text += t->sp.IdToPiece(id);
            }
            if (!out.empty() && piece0.compare(0, 3, kWordMark) == 0 &&
                (text.empty() || text[0] != ' '))
                out += ' ';
            out += text;
            run.clear();
        };
        for (size_t i = 0; i < n; i++) {
            int32_t id = ids[i];
            if (id >= 0 && id < t->pieces && !t->sp.IsControl(id)) {
                run.push_back(id);
                continue;
            }
            flush();
            char buf[64];
            spm_id_to_piece(t, id, buf, sizeof buf);
            out += buf;
        }
        flush();
        char *s = (char *)malloc(out.size() + 1);
        if (!s) throw std::bad_alloc();
        memcpy(s, out.c_str(), out.size() + 1);
        return s;
    } catch (const std::exception &e) {
        fprintf(stderr, "FATAL data/spm.cc: spm_decode of %zu ids failed: %s\n", n, e.what());
        abort();
    }
}
