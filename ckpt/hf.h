/*
 * ckpt/hf.h: Hugging Face T5ForConditionalGeneration folders: config.json + model.safetensors.
 *
 * Folder layout written by hf_save (and, for now, the project's own weights folder too):
 *
 *   DIR/config.json        a transformers T5Config (keys sorted, 2-space indent):
 *       architectures ["T5ForConditionalGeneration"], model_type "t5", _name_or_path (variant),
 *       d_model, d_kv, d_ff, num_layers (encoder), num_decoder_layers, num_heads,
 *       relative_attention_num_buckets, relative_attention_max_distance, vocab_size,
 *       feed_forward_proj "relu" | "gated-gelu", tie_word_embeddings, layer_norm_epsilon,
 *       initializer_factor 1.0, dropout_rate 0.1, decoder_start_token_id 0, eos_token_id 1,
 *       pad_token_id 0, is_encoder_decoder true, n_positions 512, torch_dtype "float32".
 *     dropout_rate is 0.1 although pretraining used no dropout (t5-spec.md 2.1): it is what every
 *     released google/t5-efficient-* config.json says, i.e. the fine-tuning default users expect.
 *   DIR/model.safetensors  every parameter as F32 under its Hugging Face name and shape
 *       (Linear weights [out, in], shared.weight [V, d], relative_attention_bias [32, h]), in the
 *       state-dict order of the model's tensor table, metadata {"format": "pt"}. With a tied
 *       embedding only shared.weight is written (transformers re-ties encoder.embed_tokens,
 *       decoder.embed_tokens and lm_head on load).
 *
 * hf_load also accepts: F16/BF16 tensors (converted to f32); the tied duplicates
 * encoder.embed_tokens.weight, decoder.embed_tokens.weight and (when tied) lm_head.weight, which
 * must equal shared.weight (a warning on stderr otherwise; shared.weight wins); a sharded folder
 * model.safetensors.index.json {"weight_map": {name: file}} instead of model.safetensors.
 * Missing config keys take the transformers defaults relative_attention_num_buckets 32,
 * relative_attention_max_distance 128, num_decoder_layers = num_layers, tie_word_embeddings true,
 * feed_forward_proj "relu", layer_norm_epsilon 1e-6; the size keys (d_model, d_kv, d_ff,
 * num_layers, num_heads, vocab_size) are required.
 */
#ifndef T5_CKPT_HF_H
#define T5_CKPT_HF_H

#include <stddef.h>

#include "pretrain/t5_config.h"
#include "pretrain/t5_model.h"

/* Read DIR/config.json into *cfg (validated with t5_config_validate). 0, or -1 with a message
 * naming the file and the key into err; *cfg is unspecified on failure. */
int hf_config_read(const char *dir, T5Config *cfg, char *err, size_t errlen);

/* As hf_config_read, from JSON text (e.g. a checkpoint's meta "config"); where names the source in
 * messages, name is the config's name when the JSON has no "_name_or_path". */
int hf_config_parse(const char *json_text, const char *where, const char *name, T5Config *cfg,
                    char *err, size_t errlen);

/* The config.json text for c (the keys and values listed above; malloc'ed, caller frees), e.g. for
 * a checkpoint's meta "config". */
char *hf_config_to_json(const T5Config *c);

typedef struct {
    int replace;            /* 1: an existing DIR is replaced (atomically); 0: refuse (error) */
    const char *spm_path;   /* if set: the tokenizer files too (hf_write_tokenizer) */
} HfSaveOpts;

/* Write the folder DIR for m's parameters, atomically: everything goes into DIR.tmp-<pid>/ (each
 * file temp, fsync, rename, fsync dir), which is then renamed to DIR (an existing DIR, if
 * opts->replace, is swapped out with renameat2 RENAME_EXCHANGE and removed), then the parent is
 * fsynced. A crash at any instant leaves the old DIR (or none) intact, plus at most a leftover
 * DIR.tmp-*, which the next hf_save_folder of DIR removes. opts NULL = {0}: refuse an existing
 * DIR, no tokenizer. 0, or -1 with a message in err (the old DIR untouched). */
int hf_save_folder(const char *dir, const T5Model *m, const HfSaveOpts *opts, char *err, size_t errlen);

/* hf_save_folder(dir, m, {.replace = 1}): the old behaviour (replace), now atomic. */
int hf_save(const char *dir, const T5Model *m, char *err, size_t errlen);

/* Write DIR/spiece.model (a copy of spm_path), DIR/tokenizer_config.json and
 * DIR/special_tokens_map.json as transformers' T5Tokenizer reads them (eos </s>, pad <pad>,
 * unk <unk>, 100 sentinels <extra_id_0..99>, model_max_length 512). 0 or -1 with a message. */
int hf_write_tokenizer(const char *dir, const char *spm_path, char *err, size_t errlen);

/* testing only: 1 makes hf_save_folder stop like a killed process after writing the weights into
 * DIR.tmp-<pid>/ (nothing renamed, nothing cleaned up; returns -1). */
extern int hf_test_crash_point;

/* Write buf (m->num_params floats in m's layout, e.g. m->params or m->grads) to path as
 * safetensors with the Hugging Face names and shapes (tied: shared.weight only). 0 or -1. */
int hf_write_tensors(const char *path, const T5Model *m, const float *buf, char *err, size_t errlen);

/* Build *m (must not be built yet) from DIR/config.json and fill every parameter from the
 * safetensors file(s). On success returns 0 and the caller owns *m (t5_model_free). On failure
 * returns -1 with a message naming the file and the tensor at fault (unknown tensor, missing
 * tensors, shape mismatch, bad dtype...), and *m is left unbuilt (nothing to free). */
int hf_load(const char *dir, T5Model *m, char *err, size_t errlen);

#endif
