/*
 * data/spm.h: SentencePiece tokenization with T5 ids, as a C API (implemented in spm.cc over
 * libsentencepiece).
 *
 * Ids: the model's own pieces 0 .. P-1 (pad 0, eos 1, unk 2 in a T5-style model); then 100
 * sentinels: <extra_id_k> = P + 99 - k (32099 - k with the real T5 spiece.model, P = 32000).
 * The model's embedding has vocab rows rounded up to a multiple of 128 (32128).
 */
#ifndef SPM_H
#define SPM_H

#include <stddef.h>
#include <stdint.h>

#define SPM_NUM_SENTINELS 100

typedef struct SpmTokenizer SpmTokenizer;

/* Load a SentencePiece model file. NULL on failure with a message naming the file in err.
 * Checks that pad=0, eos=1, unk=2 (T5 convention) and says so in err if not. */
SpmTokenizer *spm_open(const char *model_path, char *err, size_t errlen);
void spm_close(SpmTokenizer *t);

int spm_piece_count(const SpmTokenizer *t);        /* P: 32000 for T5 */
int spm_vocab_size(const SpmTokenizer *t);         /* P + 100: 32100 for T5 */
int spm_model_vocab_size(const SpmTokenizer *t);   /* rounded up to 128: 32128 for T5 */
static inline int32_t spm_sentinel(const SpmTokenizer *t, int k) {
    return (int32_t)(spm_vocab_size(t) - 1 - k);
}

/* Encode UTF-8 text (len bytes) into ids (no EOS appended). *ids is a malloc'ed buffer of
 * *cap entries that is grown as needed (may start NULL/0); caller frees. Returns the number
 * of ids, or -1 on an internal tokenizer error. Thread-safe for distinct output buffers. */
long spm_encode(const SpmTokenizer *t, const char *text, size_t len, int32_t **ids, size_t *cap);

/* Decode ids to text; sentinels print as "<extra_id_k>", pad/eos as "<pad>"/"</s>".
 * Returns a malloc'ed NUL-terminated string. */
char *spm_decode(const SpmTokenizer *t, const int32_t *ids, size_t n);

/* The piece string of one id (sentinels "<extra_id_k>", ids >= vocab "<unused_N>"),
 * written into buf. */
void spm_id_to_piece(const SpmTokenizer *t, int32_t id, char *buf, size_t buflen);

#endif
