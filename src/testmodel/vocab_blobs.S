// llama.cpp's vocab-only GGUF files, linked into kvstash_testmodel so that generating a test model
// needs no file at run time (tests run from any directory, installed or not).
//
// CMake passes the absolute paths as KVSTASH_VOCAB_SPM_PATH, KVSTASH_VOCAB_BPE_PATH and
// KVSTASH_VOCAB_QWEN2_PATH (string literals) and lists the files in OBJECT_DEPENDS, so editing a vocab file rebuilds this object.
// No assembler macros: ';' separates statements on ELF targets but starts a comment on Apple
// arm64, so each directive gets its own line.

#if !defined(KVSTASH_VOCAB_SPM_PATH) || !defined(KVSTASH_VOCAB_BPE_PATH) || \
    !defined(KVSTASH_VOCAB_QWEN2_PATH)
#error "define KVSTASH_VOCAB_{SPM,BPE,QWEN2}_PATH (see src/testmodel/CMakeLists.txt)"
#endif

#if defined(__APPLE__)
// Mach-O prefixes C symbols with '_'.
#define KVSTASH_SYM(name) _##name
#define KVSTASH_LOCAL .private_extern
  .const
#else
#define KVSTASH_SYM(name) name
// Hidden: the blobs are an implementation detail, not part of any shared object's exported ABI.
#define KVSTASH_LOCAL .hidden
  .section .rodata.kvstash_vocab, "a"
#endif

  .globl KVSTASH_SYM(kvstash_vocab_spm_begin)
  KVSTASH_LOCAL KVSTASH_SYM(kvstash_vocab_spm_begin)
  .globl KVSTASH_SYM(kvstash_vocab_spm_end)
  KVSTASH_LOCAL KVSTASH_SYM(kvstash_vocab_spm_end)
  .globl KVSTASH_SYM(kvstash_vocab_bpe_begin)
  KVSTASH_LOCAL KVSTASH_SYM(kvstash_vocab_bpe_begin)
  .globl KVSTASH_SYM(kvstash_vocab_bpe_end)
  KVSTASH_LOCAL KVSTASH_SYM(kvstash_vocab_bpe_end)
  .globl KVSTASH_SYM(kvstash_vocab_qwen2_begin)
  KVSTASH_LOCAL KVSTASH_SYM(kvstash_vocab_qwen2_begin)
  .globl KVSTASH_SYM(kvstash_vocab_qwen2_end)
  KVSTASH_LOCAL KVSTASH_SYM(kvstash_vocab_qwen2_end)

  .balign 64
KVSTASH_SYM(kvstash_vocab_spm_begin):
  .incbin KVSTASH_VOCAB_SPM_PATH
KVSTASH_SYM(kvstash_vocab_spm_end):
  // A byte after each blob so that _end never shares an address with the next symbol.
  .byte 0

  .balign 64
KVSTASH_SYM(kvstash_vocab_bpe_begin):
  .incbin KVSTASH_VOCAB_BPE_PATH
KVSTASH_SYM(kvstash_vocab_bpe_end):
  .byte 0

  .balign 64
KVSTASH_SYM(kvstash_vocab_qwen2_begin):
  .incbin KVSTASH_VOCAB_QWEN2_PATH
KVSTASH_SYM(kvstash_vocab_qwen2_end):
  .byte 0

#if defined(__ELF__)
  .type kvstash_vocab_spm_begin, %object
  .size kvstash_vocab_spm_begin, kvstash_vocab_spm_end - kvstash_vocab_spm_begin
  .type kvstash_vocab_bpe_begin, %object
  .size kvstash_vocab_bpe_begin, kvstash_vocab_bpe_end - kvstash_vocab_bpe_begin
  .type kvstash_vocab_qwen2_begin, %object
  .size kvstash_vocab_qwen2_begin, kvstash_vocab_qwen2_end - kvstash_vocab_qwen2_begin
// The blobs are data: without this note the linker would make the whole binary's stack executable.
  .section .note.GNU-stack, "", %progbits
#endif
