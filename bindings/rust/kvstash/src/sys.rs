//! Raw declarations of kvstash's C API (`include/kvstash/kvstash.h`), written by hand.
//!
//! Everything here mirrors the header one to one: the same names, `#[repr(C)]` structs with the
//! same fields in the same order, and C enums as `c_int` with constants (a Rust `enum` would be
//! undefined behaviour for a value a newer library adds). The ownership rules are the header's:
//! handles are freed by their `*_free`, `char**`/`int32_t**`/`float**` out-buffers by
//! [`kvstash_free`], accessors' `const` pointers are borrowed from their handle.
//!
//! Prefer the safe API in the crate root; these are for what it does not cover.
//!
//! The struct layouts are checked against the C compiler's for x86_64 and aarch64 Linux (LP64) in
//! this module's tests; `tests/c_layout.c` prints the C side.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub type kvstash_status = c_int;
pub const KVSTASH_OK: kvstash_status = 0;
pub const KVSTASH_INVALID_ARGUMENT: kvstash_status = 1;
pub const KVSTASH_NOT_FOUND: kvstash_status = 2;
pub const KVSTASH_CORRUPTION: kvstash_status = 3;
pub const KVSTASH_INCOMPATIBLE: kvstash_status = 4;
pub const KVSTASH_IO_ERROR: kvstash_status = 5;
pub const KVSTASH_CONTEXT_FULL: kvstash_status = 6;
pub const KVSTASH_INTERNAL: kvstash_status = 7;
pub const KVSTASH_CANCELLED: kvstash_status = 8;
pub const KVSTASH_OUT_OF_MEMORY: kvstash_status = 9;

pub type kvstash_llama_logs = c_int;
pub const KVSTASH_LLAMA_LOGS_HOST: kvstash_llama_logs = 0;
pub const KVSTASH_LLAMA_LOGS_QUIET: kvstash_llama_logs = 1;
pub const KVSTASH_LLAMA_LOGS_STDERR: kvstash_llama_logs = 2;

pub type kvstash_token = i32;

/// Opaque handles.
#[repr(C)]
pub struct kvstash_model {
    _private: [u8; 0],
}
#[repr(C)]
pub struct kvstash_session {
    _private: [u8; 0],
}
#[repr(C)]
pub struct kvstash_store {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_model_options {
    pub size: u32,
    pub n_gpu_layers: i32,
    pub repack_weights: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_chat_message {
    pub role: *const c_char,
    pub content: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_store_options {
    pub size: u32,
    pub chunk_tokens: u32,
    pub max_bytes: u64,
    pub max_pending_bytes: u64,
    pub create: bool,
    pub sync: bool,
    pub redis_url: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvstash_store_stats {
    pub chunk_tokens: u32,
    pub chunks: u64,
    pub bytes: u64,
    pub temp_files: u64,
    pub namespaces: u64,
    pub chunks_written: u64,
    pub chunks_existing: u64,
    pub chunks_dropped: u64,
    pub bytes_written: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvstash_gc_report {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    pub bytes_left: u64,
    pub temp_files_removed: u64,
}

pub type kvstash_flash_attn = c_int;
pub const KVSTASH_FLASH_ATTN_AUTO: kvstash_flash_attn = 0;
pub const KVSTASH_FLASH_ATTN_OFF: kvstash_flash_attn = 1;
pub const KVSTASH_FLASH_ATTN_ON: kvstash_flash_attn = 2;
pub const KVSTASH_FLASH_ATTN_AS_SAVED: kvstash_flash_attn = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_session_options {
    pub size: u32,
    pub n_ctx: u32,
    pub n_threads: i32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub flash_attn: kvstash_flash_attn,
    pub cache_type_k: *const c_char,
    pub cache_type_v: *const c_char,
    pub n_threads_batch: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_open_options {
    pub size: u32,
    pub n_ctx: u32,
    pub n_room: u32,
    pub n_threads: i32,
    pub flash_attn: kvstash_flash_attn,
    pub cache_type_k: *const c_char,
    pub cache_type_v: *const c_char,
    pub n_threads_batch: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvstash_sync_result {
    pub n_reused: usize,
    pub n_decoded: usize,
    pub n_restored: usize,
    pub n_published: usize,
    pub restore_ms: f64,
    pub decode_ms: f64,
}

pub type kvstash_stop_reason = c_int;
pub const KVSTASH_STOP_END_OF_GENERATION: kvstash_stop_reason = 0;
pub const KVSTASH_STOP_MAX_TOKENS: kvstash_stop_reason = 1;
pub const KVSTASH_STOP_STOP_STRING: kvstash_stop_reason = 2;
pub const KVSTASH_STOP_CONTEXT_FULL: kvstash_stop_reason = 3;
pub const KVSTASH_STOP_CANCELLED: kvstash_stop_reason = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_sample_options {
    pub size: u32,
    pub n_predict: i32,
    pub temp: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: u32,
    pub stop: *const *const c_char,
    pub n_stop: usize,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub ignore_eos: bool,
}

pub type kvstash_piece_fn =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user_data: *mut c_void) -> bool>;

#[repr(C)]
#[derive(Debug)]
pub struct kvstash_generation {
    pub text: *mut c_char,
    pub text_len: usize,
    pub tokens: *mut kvstash_token,
    pub n_tokens: usize,
    pub stop_reason: kvstash_stop_reason,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvstash_save_options {
    pub size: u32,
    pub sync: bool,
    pub replace_any: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvstash_open_stats {
    pub map_ms: f64,
    pub verify_ms: f64,
    pub context_ms: f64,
    pub restore_ms: f64,
    pub total_ms: f64,
    pub file_bytes: u64,
}

pub type kvstash_progress_fn = Option<unsafe extern "C" fn(done: u64, total: u64, user_data: *mut c_void)>;

#[repr(C)]
#[derive(Debug)]
pub struct kvstash_file_info {
    pub format_version: u32,
    pub file_size: u64,
    pub n_ctx: u32,
    pub tokens: *const kvstash_token,
    pub n_tokens: usize,
    pub kv_bytes: u64,
    pub has_logits: bool,
    pub checksums_verified: bool,
    pub writer: *const c_char,
    pub llama_build: *const c_char,
    pub model_fingerprint: *const c_char,
    pub model_description: *const c_char,
    pub model_arch: *const c_char,
    pub cache_type_k: *const c_char,
    pub cache_type_v: *const c_char,
    pub flash_attn: bool,
}

extern "C" {
    pub fn kvstash_version() -> *const c_char;
    pub fn kvstash_last_error() -> *const c_char;
    pub fn kvstash_status_name(status: kvstash_status) -> *const c_char;
    pub fn kvstash_free(buffer: *mut c_void);
    pub fn kvstash_set_llama_logs(mode: kvstash_llama_logs) -> kvstash_status;
    pub fn kvstash_set_sigbus_guard(enabled: bool);

    pub fn kvstash_model_options_init(options: *mut kvstash_model_options, size: usize);
    pub fn kvstash_model_load(
        path: *const c_char,
        options: *const kvstash_model_options,
        out: *mut *mut kvstash_model,
    ) -> kvstash_status;
    pub fn kvstash_model_free(model: *mut kvstash_model);
    pub fn kvstash_model_path(model: *const kvstash_model) -> *const c_char;
    pub fn kvstash_model_description(model: *const kvstash_model) -> *const c_char;
    pub fn kvstash_model_fingerprint(model: *const kvstash_model) -> *const c_char;
    pub fn kvstash_model_n_vocab(model: *const kvstash_model) -> i32;
    pub fn kvstash_model_n_ctx_train(model: *const kvstash_model) -> i32;
    pub fn kvstash_model_tokenize(
        model: *const kvstash_model,
        text: *const c_char,
        len: usize,
        add_bos: bool,
        tokens: *mut *mut kvstash_token,
        n_tokens: *mut usize,
    ) -> kvstash_status;
    pub fn kvstash_model_detokenize(
        model: *const kvstash_model,
        tokens: *const kvstash_token,
        n_tokens: usize,
        text: *mut *mut c_char,
        len: *mut usize,
    ) -> kvstash_status;
    pub fn kvstash_model_is_end_of_generation(model: *const kvstash_model, token: kvstash_token) -> bool;
    pub fn kvstash_model_apply_chat_template(
        model: *const kvstash_model,
        messages: *const kvstash_chat_message,
        n_messages: usize,
        template_name: *const c_char,
        add_assistant: bool,
        text: *mut *mut c_char,
    ) -> kvstash_status;

    pub fn kvstash_store_options_init(options: *mut kvstash_store_options, size: usize);
    pub fn kvstash_store_open(
        dir: *const c_char,
        options: *const kvstash_store_options,
        out: *mut *mut kvstash_store,
    ) -> kvstash_status;
    pub fn kvstash_store_free(store: *mut kvstash_store);
    pub fn kvstash_store_wait_for_writes(store: *mut kvstash_store) -> kvstash_status;
    pub fn kvstash_store_stats_get(
        store: *const kvstash_store,
        out: *mut kvstash_store_stats,
    ) -> kvstash_status;
    pub fn kvstash_store_gc(
        store: *mut kvstash_store,
        max_bytes: u64,
        out: *mut kvstash_gc_report,
    ) -> kvstash_status;
    pub fn kvstash_store_verify(
        store: *const kvstash_store,
        chunks_ok: *mut u64,
        chunks_bad: *mut u64,
        bad_report: *mut *mut c_char,
    ) -> kvstash_status;
    pub fn kvstash_store_clear(
        store: *mut kvstash_store,
        ns_hash: *const c_char,
        removed: *mut u64,
    ) -> kvstash_status;

    pub fn kvstash_session_options_init(options: *mut kvstash_session_options, size: usize);
    pub fn kvstash_open_options_init(options: *mut kvstash_open_options, size: usize);
    pub fn kvstash_session_create(
        model: *const kvstash_model,
        options: *const kvstash_session_options,
        out: *mut *mut kvstash_session,
    ) -> kvstash_status;
    pub fn kvstash_session_open(
        model: *const kvstash_model,
        path: *const c_char,
        options: *const kvstash_open_options,
        out: *mut *mut kvstash_session,
    ) -> kvstash_status;
    pub fn kvstash_session_free(session: *mut kvstash_session);
    pub fn kvstash_session_append_text(
        session: *mut kvstash_session,
        text: *const c_char,
        len: usize,
    ) -> kvstash_status;
    pub fn kvstash_session_append_tokens(
        session: *mut kvstash_session,
        tokens: *const kvstash_token,
        n_tokens: usize,
    ) -> kvstash_status;
    pub fn kvstash_session_sync(
        session: *mut kvstash_session,
        tokens: *const kvstash_token,
        n_tokens: usize,
        store: *mut kvstash_store,
        result: *mut kvstash_sync_result,
    ) -> kvstash_status;
    pub fn kvstash_sample_options_init(options: *mut kvstash_sample_options, size: usize);
    pub fn kvstash_generation_clear(generation: *mut kvstash_generation);
    pub fn kvstash_session_generate(
        session: *mut kvstash_session,
        options: *const kvstash_sample_options,
        on_piece: kvstash_piece_fn,
        user_data: *mut c_void,
        out: *mut kvstash_generation,
    ) -> kvstash_status;
    pub fn kvstash_save_options_init(options: *mut kvstash_save_options, size: usize);
    pub fn kvstash_session_save(
        session: *mut kvstash_session,
        path: *const c_char,
        options: *const kvstash_save_options,
    ) -> kvstash_status;
    pub fn kvstash_session_logits(
        session: *mut kvstash_session,
        logits: *mut *mut f32,
        n_logits: *mut usize,
    ) -> kvstash_status;
    pub fn kvstash_session_tokens(
        session: *const kvstash_session,
        n_tokens: *mut usize,
    ) -> *const kvstash_token;
    pub fn kvstash_session_n_ctx(session: *const kvstash_session) -> u32;
    pub fn kvstash_session_n_decoded(session: *const kvstash_session) -> usize;
    pub fn kvstash_session_open_stats(
        session: *const kvstash_session,
        out: *mut kvstash_open_stats,
    ) -> kvstash_status;
    pub fn kvstash_session_set_progress(
        session: *mut kvstash_session,
        progress: kvstash_progress_fn,
        user_data: *mut c_void,
    ) -> kvstash_status;
    pub fn kvstash_session_cancel(session: *mut kvstash_session);

    pub fn kvstash_inspect(
        path: *const c_char,
        verify_checksums: bool,
        out: *mut *mut kvstash_file_info,
    ) -> kvstash_status;
    pub fn kvstash_file_info_free(info: *mut kvstash_file_info);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    // (size, align) as gcc prints them on x86_64 Linux for include/kvstash/kvstash.h (run
    // tests/c_layout.c to see them); the same on every LP64 target (aarch64 Linux, macOS).
    #[test]
    #[cfg(all(target_pointer_width = "64", not(windows)))]
    fn struct_layouts_match_the_c_compiler() {
        fn check<T>(name: &str, size: usize, align: usize) {
            assert_eq!(
                (size_of::<T>(), align_of::<T>()),
                (size, align),
                "layout of {}",
                name
            );
        }
        check::<kvstash_model_options>("kvstash_model_options", 12, 4);
        check::<kvstash_chat_message>("kvstash_chat_message", 16, 8);
        check::<kvstash_store_options>("kvstash_store_options", 40, 8);
        check::<kvstash_store_stats>("kvstash_store_stats", 72, 8);
        check::<kvstash_gc_report>("kvstash_gc_report", 32, 8);
        check::<kvstash_session_options>("kvstash_session_options", 48, 8);
        check::<kvstash_open_options>("kvstash_open_options", 48, 8);
        check::<kvstash_sync_result>("kvstash_sync_result", 48, 8);
        check::<kvstash_sample_options>("kvstash_sample_options", 64, 8);
        check::<kvstash_generation>("kvstash_generation", 40, 8);
        check::<kvstash_save_options>("kvstash_save_options", 8, 4);
        check::<kvstash_open_stats>("kvstash_open_stats", 48, 8);
        check::<kvstash_file_info>("kvstash_file_info", 120, 8);
    }

    #[test]
    fn the_init_functions_set_size_to_the_rust_struct_size() {
        // Given the Rust struct's size, the library writes at most that many bytes and says so.
        unsafe {
            let mut m: kvstash_model_options = std::mem::zeroed();
            kvstash_model_options_init(&mut m, size_of::<kvstash_model_options>());
            assert_eq!(m.size as usize, size_of::<kvstash_model_options>());
            let mut s: kvstash_session_options = std::mem::zeroed();
            kvstash_session_options_init(&mut s, size_of::<kvstash_session_options>());
            assert_eq!(s.size as usize, size_of::<kvstash_session_options>());
            let mut o: kvstash_open_options = std::mem::zeroed();
            kvstash_open_options_init(&mut o, size_of::<kvstash_open_options>());
            assert_eq!(o.size as usize, size_of::<kvstash_open_options>());
            let mut p: kvstash_sample_options = std::mem::zeroed();
            kvstash_sample_options_init(&mut p, size_of::<kvstash_sample_options>());
            assert_eq!(p.size as usize, size_of::<kvstash_sample_options>());
        }
    }
}
