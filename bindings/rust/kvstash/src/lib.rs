//! Persist and reuse an LLM prompt's KV cache: safe Rust bindings to kvstash's C API.
//!
//! ```no_run
//! use kvstash::{Model, OpenOptions, SampleOptions, Session, SessionOptions};
//! # fn main() -> kvstash::Result<()> {
//! let model = Model::load("model.gguf")?;
//! let mut session = Session::create(&model, &SessionOptions::default())?;
//! session.append_text("You are a helpful assistant.")?;   // decoded once...
//! session.save("system.kvs")?;                            // ...and kept on disk
//!
//! let mut session = Session::open(&model, "system.kvs", &OpenOptions::default())?;
//! session.append_text(" User: Hi! Assistant:")?;          // no positions, no re-decoding
//! let answer = session.generate(&SampleOptions::default())?;
//! println!("{}", answer.text);
//! # Ok(()) }
//! ```
//!
//! # Ownership
//!
//! Every handle type owns its C object and frees it on drop: [`Model`], [`Session`], [`Store`].
//! A session keeps its model alive inside the C library, so a `Session` does not borrow its
//! `Model`: dropping the model first is fine. Everything the C library hands out in a buffer
//! (tokens, text, logits, generations, file information) is copied into Rust values and the
//! buffer released with `kvstash_free` before the call returns: nothing returned borrows from a
//! handle. Inputs (`&str`, `&[Token]`, options) are only read during the call.
//!
//! # Threads
//!
//! `Model` and `Store` are `Send + Sync` (share them with `Arc`). A `Session` is `Send` but not
//! `Sync`: one thread at a time; [`Session::canceller`] gives a `Send + Sync` handle that stops
//! its running call from any thread.
//!
//! # Errors
//!
//! Every fallible call returns [`Result`]; [`Error`] carries the C [`Status`] and the library's
//! one-sentence message (the object, the cause and the fix).
//!
//! The raw C declarations are in [`sys`].

pub mod sys;

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_void};
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};

/// A token id of the model's vocabulary.
pub type Token = i32;

/// The result of every fallible kvstash call.
pub type Result<T> = std::result::Result<T, Error>;

// ---- Errors ------------------------------------------------------------------------------------

/// What kind of failure a call met (`kvstash_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The caller asked for something impossible (bad options, a NUL byte in a path, ...).
    InvalidArgument,
    /// A file or model is missing.
    NotFound,
    /// A file's bytes are wrong: bad magic, checksum, truncated.
    Corruption,
    /// A valid file that does not fit this model or context.
    Incompatible,
    /// The operating system refused (ENOSPC, EIO, EACCES, ...).
    IoError,
    /// The context has no room for more tokens.
    ContextFull,
    /// llama.cpp failed where kvstash's checks said it would not.
    Internal,
    /// [`Canceller::cancel`] or a callback asked to stop.
    Cancelled,
    /// An allocation failed.
    OutOfMemory,
    /// A status this crate does not know (from a newer library).
    Other(i32),
}

impl Status {
    fn from_raw(code: sys::kvstash_status) -> Status {
        match code {
            sys::KVSTASH_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::KVSTASH_NOT_FOUND => Status::NotFound,
            sys::KVSTASH_CORRUPTION => Status::Corruption,
            sys::KVSTASH_INCOMPATIBLE => Status::Incompatible,
            sys::KVSTASH_IO_ERROR => Status::IoError,
            sys::KVSTASH_CONTEXT_FULL => Status::ContextFull,
            sys::KVSTASH_INTERNAL => Status::Internal,
            sys::KVSTASH_CANCELLED => Status::Cancelled,
            sys::KVSTASH_OUT_OF_MEMORY => Status::OutOfMemory,
            other => Status::Other(other),
        }
    }

    fn to_raw(self) -> sys::kvstash_status {
        match self {
            Status::InvalidArgument => sys::KVSTASH_INVALID_ARGUMENT,
            Status::NotFound => sys::KVSTASH_NOT_FOUND,
            Status::Corruption => sys::KVSTASH_CORRUPTION,
            Status::Incompatible => sys::KVSTASH_INCOMPATIBLE,
            Status::IoError => sys::KVSTASH_IO_ERROR,
            Status::ContextFull => sys::KVSTASH_CONTEXT_FULL,
            Status::Internal => sys::KVSTASH_INTERNAL,
            Status::Cancelled => sys::KVSTASH_CANCELLED,
            Status::OutOfMemory => sys::KVSTASH_OUT_OF_MEMORY,
            Status::Other(code) => code,
        }
    }

    /// The library's name for the status: "not_found", "corruption", ...
    pub fn name(self) -> &'static str {
        // Static storage in the library.
        unsafe { CStr::from_ptr(sys::kvstash_status_name(self.to_raw())) }
            .to_str()
            .unwrap_or("unknown")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed call: its [`Status`] and the library's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

impl Error {
    fn new(status: Status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for Error {}

/// Turns a status code into a Result, reading the calling thread's message right away.
fn check(code: sys::kvstash_status) -> Result<()> {
    if code == sys::KVSTASH_OK {
        return Ok(());
    }
    // Borrowed until this thread's next kvstash call: copied now.
    let message = unsafe { CStr::from_ptr(sys::kvstash_last_error()) }
        .to_string_lossy()
        .into_owned();
    Err(Error::new(Status::from_raw(code), message))
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(Status::InvalidArgument, format!("{} contains a NUL byte", what)))
}

fn c_path(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::new(
            Status::InvalidArgument,
            format!("path {:?} contains a NUL byte", path),
        )
    })
}

/// A borrowed C string as an owned String ("" for NULL).
unsafe fn owned_str(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Owns a buffer the library returned through an out-parameter; kvstash_free on drop.
struct CBuf<T>(*mut T);

impl<T> Drop for CBuf<T> {
    fn drop(&mut self) {
        unsafe { sys::kvstash_free(self.0 as *mut c_void) }
    }
}

/// Copies `n` elements of a library buffer into a Vec and frees the buffer.
unsafe fn take_vec<T: Copy>(buf: *mut T, n: usize) -> Vec<T> {
    let buf = CBuf(buf);
    if buf.0.is_null() || n == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(buf.0, n).to_vec()
}

/// Copies a library text buffer (`len` bytes) into a String (invalid UTF-8 replaced) and frees it.
unsafe fn take_string(buf: *mut c_char, len: usize) -> String {
    let bytes = take_vec(buf as *mut u8, len);
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// An options struct filled by its `*_init` function, which writes the library's defaults into at
/// most `size_of::<T>()` bytes and sets `size` to that, so the library reads only this crate's fields.
unsafe fn c_defaults<T: Copy>(init: unsafe extern "C" fn(*mut T, usize)) -> T {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    init(value.as_mut_ptr(), std::mem::size_of::<T>());
    value.assume_init()
}

/// The library's version, e.g. "0.2.0".
pub fn version() -> String {
    unsafe { owned_str(sys::kvstash_version()) }
}

/// Where llama.cpp's log lines go (a process-wide setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaLogs {
    /// To the callback installed before kvstash's (the default: kvstash does not change logging).
    Host,
    /// Nowhere.
    Quiet,
    /// To standard error.
    Stderr,
}

/// Sets where llama.cpp's log lines go, for the whole process.
pub fn set_llama_logs(mode: LlamaLogs) -> Result<()> {
    let raw = match mode {
        LlamaLogs::Host => sys::KVSTASH_LLAMA_LOGS_HOST,
        LlamaLogs::Quiet => sys::KVSTASH_LLAMA_LOGS_QUIET,
        LlamaLogs::Stderr => sys::KVSTASH_LLAMA_LOGS_STDERR,
    };
    check(unsafe { sys::kvstash_set_llama_logs(raw) })
}

/// Whether kvstash may install its SIGBUS handler (chained to the previous one) when it maps a
/// session file, so that a file truncated under it is an error, not a crash. `false`: no handler,
/// files are read into memory instead. Process-wide; `true` by default.
pub fn set_sigbus_guard(enabled: bool) {
    unsafe { sys::kvstash_set_sigbus_guard(enabled) }
}

// ---- Model -------------------------------------------------------------------------------------

/// How to load a model. `Default` is the library's defaults.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Layers offloaded to a GPU backend when llama.cpp has one (0).
    pub n_gpu_layers: i32,
    /// llama.cpp's repacked weights for some quantized types (true).
    pub repack_weights: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        let c = unsafe { c_defaults(sys::kvstash_model_options_init) };
        ModelOptions {
            n_gpu_layers: c.n_gpu_layers,
            repack_weights: c.repack_weights,
        }
    }
}

/// A loaded GGUF model. Owns its handle; shareable between threads and sessions.
pub struct Model {
    raw: NonNull<sys::kvstash_model>,
}

// The C API: models may be shared by any number of threads and sessions.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // Sessions made from it keep the C model alive.
        unsafe { sys::kvstash_model_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path())
            .field("description", &self.description())
            .finish()
    }
}

/// One message of a chat, for [`Model::apply_chat_template`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant".
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

impl Model {
    /// Loads a GGUF model with the default options.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(path, &ModelOptions::default())
    }

    /// Loads a GGUF model.
    pub fn load_with(path: impl AsRef<Path>, options: &ModelOptions) -> Result<Model> {
        let path = c_path(path.as_ref())?;
        let mut c = unsafe { c_defaults(sys::kvstash_model_options_init) };
        c.n_gpu_layers = options.n_gpu_layers;
        c.repack_weights = options.repack_weights;
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvstash_model_load(path.as_ptr(), &c, &mut out) })?;
        Ok(Model {
            raw: NonNull::new(out).expect("kvstash_model_load returned OK and NULL"),
        })
    }

    /// The path it was loaded from.
    pub fn path(&self) -> String {
        unsafe { owned_str(sys::kvstash_model_path(self.raw.as_ptr())) }
    }

    /// E.g. "llama 1B F16".
    pub fn description(&self) -> String {
        unsafe { owned_str(sys::kvstash_model_description(self.raw.as_ptr())) }
    }

    /// 32 lowercase hex digits identifying the weights and metadata.
    pub fn fingerprint(&self) -> String {
        unsafe { owned_str(sys::kvstash_model_fingerprint(self.raw.as_ptr())) }
    }

    pub fn n_vocab(&self) -> usize {
        unsafe { sys::kvstash_model_n_vocab(self.raw.as_ptr()) }.max(0) as usize
    }

    pub fn n_ctx_train(&self) -> u32 {
        unsafe { sys::kvstash_model_n_ctx_train(self.raw.as_ptr()) }.max(0) as u32
    }

    /// The tokens of `text`; `add_bos` follows the model's vocabulary.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<Token>> {
        let mut tokens = ptr::null_mut();
        let mut n = 0;
        let code = unsafe {
            sys::kvstash_model_tokenize(
                self.raw.as_ptr(),
                text.as_ptr() as *const c_char,
                text.len(),
                add_bos,
                &mut tokens,
                &mut n,
            )
        };
        check(code)?;
        Ok(unsafe { take_vec(tokens, n) })
    }

    /// The text of `tokens` (bytes that are not valid UTF-8 become U+FFFD).
    pub fn detokenize(&self, tokens: &[Token]) -> Result<String> {
        let mut text = ptr::null_mut();
        let mut len = 0;
        check(unsafe {
            sys::kvstash_model_detokenize(
                self.raw.as_ptr(),
                tokens.as_ptr(),
                tokens.len(),
                &mut text,
                &mut len,
            )
        })?;
        Ok(unsafe { take_string(text, len) })
    }

    /// Whether `token` ends a generation (EOS, EOT, ...).
    pub fn is_end_of_generation(&self, token: Token) -> bool {
        unsafe { sys::kvstash_model_is_end_of_generation(self.raw.as_ptr(), token) }
    }

    /// The prompt text of `messages` in a chat template: llama.cpp's built-in `template` (e.g.
    /// "chatml") when given, else the model's own. With `add_assistant` the text ends with the
    /// opening of the assistant's turn.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        template: Option<&str>,
        add_assistant: bool,
    ) -> Result<String> {
        let mut strings = Vec::with_capacity(messages.len() * 2);
        for m in messages {
            strings.push(c_string("a chat message's role", &m.role)?);
            strings.push(c_string("a chat message's content", &m.content)?);
        }
        let c_messages: Vec<sys::kvstash_chat_message> = strings
            .chunks(2)
            .map(|pair| sys::kvstash_chat_message {
                role: pair[0].as_ptr(),
                content: pair[1].as_ptr(),
            })
            .collect();
        let template = match template {
            Some(t) => Some(c_string("the template name", t)?),
            None => None,
        };
        let mut text = ptr::null_mut();
        check(unsafe {
            sys::kvstash_model_apply_chat_template(
                self.raw.as_ptr(),
                c_messages.as_ptr(),
                c_messages.len(),
                template.as_ref().map_or(ptr::null(), |t| t.as_ptr()),
                add_assistant,
                &mut text,
            )
        })?;
        let buf = CBuf(text);
        Ok(unsafe { owned_str(buf.0) })
    }
}

// ---- Store -------------------------------------------------------------------------------------

/// How to open a store. `Default` is the library's defaults.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Tokens per chunk of a new store (0: 256; 16..16384, a multiple of 16).
    pub chunk_tokens: u32,
    /// Byte budget, evicted least recently used first (0: none).
    pub max_bytes: u64,
    /// Bytes queued for the background writer (1 GiB); more are dropped, never waited for.
    pub max_pending_bytes: u64,
    /// Create the directory when missing (true).
    pub create: bool,
    /// fsync chunk files before publishing (true).
    pub sync: bool,
    /// A Redis tier shared by several machines, `redis://[user:password@]host:port[/db]` (None:
    /// none). Redis being down or full never fails a lookup; the password is never printed.
    pub redis_url: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let c = unsafe { c_defaults(sys::kvstash_store_options_init) };
        StoreOptions {
            chunk_tokens: c.chunk_tokens,
            max_bytes: c.max_bytes,
            max_pending_bytes: c.max_pending_bytes,
            create: c.create,
            sync: c.sync,
            redis_url: if c.redis_url.is_null() {
                None
            } else {
                Some(unsafe { owned_str(c.redis_url) })
            },
        }
    }
}

/// A store's contents and this handle's background writer's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
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

/// What [`Store::gc`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    pub bytes_left: u64,
    pub temp_files_removed: u64,
}

/// What [`Store::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub chunks_ok: u64,
    pub chunks_bad: u64,
    /// One "path: why" line per bad chunk ("" when none).
    pub bad_report: String,
}

/// A prefix cache directory shared by processes (docs/STORE.md). Owns its handle; dropping it
/// waits for queued writes. Shareable between threads and sessions.
pub struct Store {
    raw: NonNull<sys::kvstash_store>,
}

// The C API: stores may be shared by any number of threads and sessions.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Drop for Store {
    fn drop(&mut self) {
        unsafe { sys::kvstash_store_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("raw", &self.raw).finish()
    }
}

impl Store {
    /// Opens (and by default creates) the store in `dir` with the default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir, &StoreOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: &StoreOptions) -> Result<Store> {
        let dir = c_path(dir.as_ref())?;
        let redis_url = match &options.redis_url {
            Some(u) => Some(c_string("redis_url", u)?),
            None => None,
        };
        let mut c = unsafe { c_defaults(sys::kvstash_store_options_init) };
        c.chunk_tokens = options.chunk_tokens;
        c.max_bytes = options.max_bytes;
        c.max_pending_bytes = options.max_pending_bytes;
        c.create = options.create;
        c.sync = options.sync;
        c.redis_url = redis_url.as_ref().map_or(ptr::null(), |u| u.as_ptr());
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvstash_store_open(dir.as_ptr(), &c, &mut out) })?;
        Ok(Store {
            raw: NonNull::new(out).expect("kvstash_store_open returned OK and NULL"),
        })
    }

    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = sys::kvstash_store_stats::default();
        check(unsafe { sys::kvstash_store_stats_get(self.raw.as_ptr(), &mut s) })?;
        Ok(StoreStats {
            chunk_tokens: s.chunk_tokens,
            chunks: s.chunks,
            bytes: s.bytes,
            temp_files: s.temp_files,
            namespaces: s.namespaces,
            chunks_written: s.chunks_written,
            chunks_existing: s.chunks_existing,
            chunks_dropped: s.chunks_dropped,
            bytes_written: s.bytes_written,
        })
    }

    /// Removes dead writers' temp files, then least recently used chunks until at most `max_bytes`.
    pub fn gc(&self, max_bytes: u64) -> Result<GcReport> {
        let mut r = sys::kvstash_gc_report::default();
        check(unsafe { sys::kvstash_store_gc(self.raw.as_ptr(), max_bytes, &mut r) })?;
        Ok(GcReport {
            chunks_removed: r.chunks_removed,
            bytes_removed: r.bytes_removed,
            bytes_left: r.bytes_left,
            temp_files_removed: r.temp_files_removed,
        })
    }

    /// Reads and checks every chunk.
    pub fn verify(&self) -> Result<VerifyReport> {
        let (mut ok, mut bad, mut report) = (0, 0, ptr::null_mut());
        check(unsafe { sys::kvstash_store_verify(self.raw.as_ptr(), &mut ok, &mut bad, &mut report) })?;
        let report = CBuf(report);
        Ok(VerifyReport {
            chunks_ok: ok,
            chunks_bad: bad,
            bad_report: unsafe { owned_str(report.0) },
        })
    }

    /// Removes every chunk, or those of namespace `ns_hash` (hex); returns how many.
    pub fn clear(&self, ns_hash: Option<&str>) -> Result<u64> {
        let ns = match ns_hash {
            Some(h) => Some(c_string("the namespace hash", h)?),
            None => None,
        };
        let mut removed = 0;
        check(unsafe {
            sys::kvstash_store_clear(
                self.raw.as_ptr(),
                ns.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
                &mut removed,
            )
        })?;
        Ok(removed)
    }

    /// Blocks until every chunk queued so far was written or dropped.
    pub fn wait_for_writes(&self) -> Result<()> {
        check(unsafe { sys::kvstash_store_wait_for_writes(self.raw.as_ptr()) })
    }
}

// ---- Session options ---------------------------------------------------------------------------

/// Flash attention for a new context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttn {
    Auto,
    Off,
    On,
    /// As the session file says ([`OpenOptions`] only).
    AsSaved,
}

impl FlashAttn {
    fn from_raw(raw: sys::kvstash_flash_attn) -> FlashAttn {
        match raw {
            sys::KVSTASH_FLASH_ATTN_OFF => FlashAttn::Off,
            sys::KVSTASH_FLASH_ATTN_ON => FlashAttn::On,
            sys::KVSTASH_FLASH_ATTN_AS_SAVED => FlashAttn::AsSaved,
            _ => FlashAttn::Auto,
        }
    }

    fn to_raw(self) -> sys::kvstash_flash_attn {
        match self {
            FlashAttn::Auto => sys::KVSTASH_FLASH_ATTN_AUTO,
            FlashAttn::Off => sys::KVSTASH_FLASH_ATTN_OFF,
            FlashAttn::On => sys::KVSTASH_FLASH_ATTN_ON,
            FlashAttn::AsSaved => sys::KVSTASH_FLASH_ATTN_AS_SAVED,
        }
    }
}

/// A new session's context. `Default` is the library's defaults.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// 4096; 0: the model's training context.
    pub n_ctx: u32,
    /// 0: all cores.
    pub n_threads: i32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub flash_attn: FlashAttn,
    /// "f16"; also f32 bf16 q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1.
    pub cache_type_k: String,
    pub cache_type_v: String,
    /// Threads for prompts (llama.cpp's `-tb`); 0: as `n_threads`.
    pub n_threads_batch: i32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        let c = unsafe { c_defaults(sys::kvstash_session_options_init) };
        SessionOptions {
            n_ctx: c.n_ctx,
            n_threads: c.n_threads,
            n_batch: c.n_batch,
            n_ubatch: c.n_ubatch,
            flash_attn: FlashAttn::from_raw(c.flash_attn),
            cache_type_k: unsafe { owned_str(c.cache_type_k) },
            cache_type_v: unsafe { owned_str(c.cache_type_v) },
            n_threads_batch: c.n_threads_batch,
        }
    }
}

/// How to open a session file. Every parameter that decides the meaning of the KV bytes comes
/// from the file; `Default` means "as saved", and a setting that disagrees is refused by name.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// 0: as saved, or just what `n_room` needs.
    pub n_ctx: u32,
    /// Tokens the caller will add after the saved ones (0: unknown).
    pub n_room: u32,
    /// 0: all cores.
    pub n_threads: i32,
    pub flash_attn: FlashAttn,
    /// None: as saved.
    pub cache_type_k: Option<String>,
    pub cache_type_v: Option<String>,
    /// Threads for prompts; 0: as `n_threads`.
    pub n_threads_batch: i32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        let c = unsafe { c_defaults(sys::kvstash_open_options_init) };
        OpenOptions {
            n_ctx: c.n_ctx,
            n_room: c.n_room,
            n_threads: c.n_threads,
            flash_attn: FlashAttn::from_raw(c.flash_attn),
            cache_type_k: if c.cache_type_k.is_null() {
                None
            } else {
                Some(unsafe { owned_str(c.cache_type_k) })
            },
            cache_type_v: if c.cache_type_v.is_null() {
                None
            } else {
                Some(unsafe { owned_str(c.cache_type_v) })
            },
            n_threads_batch: c.n_threads_batch,
        }
    }
}

/// Sampling for [`Session::generate`]. `Default` is the library's defaults.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// 128; < 0: until end of generation or a full context.
    pub n_predict: i32,
    /// 0: greedy.
    pub temp: f32,
    /// 40; <= 0: off.
    pub top_k: i32,
    /// 0.95; >= 1: off.
    pub top_p: f32,
    /// 0.05; <= 0: off.
    pub min_p: f32,
    /// [`SampleOptions::RANDOM_SEED`]: a random one.
    pub seed: u32,
    /// The text stops before the first match of any of these.
    pub stop: Vec<String>,
    /// 1: off; llama.cpp's `--repeat-penalty` over the session's last `repeat_last_n` tokens.
    pub repeat_penalty: f32,
    /// 64; 0: off; -1: the whole context.
    pub repeat_last_n: i32,
    /// End-of-generation tokens are never sampled.
    pub ignore_eos: bool,
}

impl SampleOptions {
    pub const RANDOM_SEED: u32 = 0xFFFF_FFFF;
}

impl Default for SampleOptions {
    fn default() -> Self {
        let c = unsafe { c_defaults(sys::kvstash_sample_options_init) };
        SampleOptions {
            n_predict: c.n_predict,
            temp: c.temp,
            top_k: c.top_k,
            top_p: c.top_p,
            min_p: c.min_p,
            seed: c.seed,
            stop: Vec::new(),
            repeat_penalty: c.repeat_penalty,
            repeat_last_n: c.repeat_last_n,
            ignore_eos: c.ignore_eos,
        }
    }
}

/// How to save a session. `Default` is the library's defaults.
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// fsync file and directory before returning (true).
    pub sync: bool,
    /// Replace an existing file that is not a kvstash session (false).
    pub replace_any: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        let c = unsafe { c_defaults(sys::kvstash_save_options_init) };
        SaveOptions {
            sync: c.sync,
            replace_any: c.replace_any,
        }
    }
}

// ---- Session -----------------------------------------------------------------------------------

/// What [`Session::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncResult {
    /// Tokens kept from the cache or restored from the store.
    pub n_reused: usize,
    /// Tokens decoded now.
    pub n_decoded: usize,
    /// Of `n_reused`: loaded from the store.
    pub n_restored: usize,
    /// Tokens in new whole chunks queued for the store.
    pub n_published: usize,
    pub restore_ms: f64,
    pub decode_ms: f64,
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    EndOfGeneration,
    MaxTokens,
    StopString,
    ContextFull,
    /// The piece callback returned false.
    Cancelled,
    /// A reason this crate does not know (from a newer library).
    Other(i32),
}

impl StopReason {
    fn from_raw(raw: sys::kvstash_stop_reason) -> StopReason {
        match raw {
            sys::KVSTASH_STOP_END_OF_GENERATION => StopReason::EndOfGeneration,
            sys::KVSTASH_STOP_MAX_TOKENS => StopReason::MaxTokens,
            sys::KVSTASH_STOP_STOP_STRING => StopReason::StopString,
            sys::KVSTASH_STOP_CONTEXT_FULL => StopReason::ContextFull,
            sys::KVSTASH_STOP_CANCELLED => StopReason::Cancelled,
            other => StopReason::Other(other),
        }
    }
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The generated text (ends before a stop string's match). When the match starts inside a
    /// token, that token is not kept, but its bytes before the match end `text`: at most one
    /// token's bytes of `text` are not in the session.
    pub text: String,
    /// The generated tokens the session keeps.
    pub tokens: Vec<Token>,
    pub stop_reason: StopReason,
}

/// Where [`Session::open`]'s time went (milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpenStats {
    pub map_ms: f64,
    pub verify_ms: f64,
    pub context_ms: f64,
    pub restore_ms: f64,
    pub total_ms: f64,
    pub file_bytes: u64,
}

/// The C session behind a [`Session`] and its [`Canceller`]s. The pointer is null once the
/// session is dropped; `lock` serializes the free with cancels (calls through `Session` take
/// `&mut`/`&` of the Session and never this lock, so a cancel reaches a running call).
struct SessionCell {
    raw: Mutex<*mut sys::kvstash_session>,
}

// Only kvstash_session_cancel (safe from any thread) and the free run through the shared cell.
unsafe impl Send for SessionCell {}
unsafe impl Sync for SessionCell {}

/// A session: a llama.cpp context and the tokens it holds. Owns its C session (freed on drop)
/// and keeps its model alive. `Send` but not `Sync`: one thread at a time.
pub struct Session {
    raw: NonNull<sys::kvstash_session>,
    // NonNull is neither Send nor Sync; Send is implemented below, Sync not: the C session is
    // used by one thread at a time.
    cell: Arc<SessionCell>,
}

unsafe impl Send for Session {}

impl Drop for Session {
    fn drop(&mut self) {
        let mut raw = self.cell.raw.lock().unwrap_or_else(|e| e.into_inner());
        unsafe { sys::kvstash_session_free(*raw) };
        *raw = ptr::null_mut();
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("n_ctx", &self.n_ctx())
            .field("n_tokens", &self.n_tokens())
            .finish()
    }
}

/// Stops a session's running append, sync, generate or save from any thread ([`Session::canceller`]).
/// Does not keep the session alive: after the session is dropped, `cancel` does nothing. It takes
/// a lock (against the session's drop), so call it from a thread, not from a signal handler.
#[derive(Clone)]
pub struct Canceller {
    cell: Arc<SessionCell>,
}

impl Canceller {
    /// The running call returns [`Status::Cancelled`] within milliseconds and the session is as
    /// before it; when none runs, the session's next call is cancelled.
    pub fn cancel(&self) {
        let raw = self.cell.raw.lock().unwrap_or_else(|e| e.into_inner());
        if !raw.is_null() {
            unsafe { sys::kvstash_session_cancel(*raw) }
        }
    }
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Canceller")
    }
}

/// The state of a [`Session::generate_stream`] call, reached by the C callback through its
/// user_data pointer.
struct StreamState<'f> {
    on_piece: &'f mut dyn FnMut(&str) -> bool,
    pending: Vec<u8>, // bytes of a UTF-8 character split across pieces
    panic: Option<Box<dyn std::any::Any + Send + 'static>>,
}

impl<'f> StreamState<'f> {
    /// Passes on the complete UTF-8 text of `bytes` after what is pending; keeps an incomplete
    /// character's bytes for the next piece. Invalid bytes become U+FFFD.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(unsafe { std::str::from_utf8_unchecked(valid) });
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            rest = after; // incomplete at the end: wait for more
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        text.is_empty() || (self.on_piece)(&text)
    }
}

unsafe extern "C" fn piece_trampoline(piece: *const c_char, len: usize, user_data: *mut c_void) -> bool {
    let state = &mut *(user_data as *mut StreamState<'_>);
    if state.panic.is_some() {
        return false;
    }
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(piece as *const u8, len)
    };
    // A panic must not unwind into C: keep it, stop the generation, re-raise after the call.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.feed(bytes))) {
        Ok(go_on) => go_on,
        Err(payload) => {
            state.panic = Some(payload);
            false
        }
    }
}

impl Session {
    /// A fresh, empty session on `model`.
    pub fn create(model: &Model, options: &SessionOptions) -> Result<Session> {
        let k = c_string("cache_type_k", &options.cache_type_k)?;
        let v = c_string("cache_type_v", &options.cache_type_v)?;
        let mut c = unsafe { c_defaults(sys::kvstash_session_options_init) };
        c.n_ctx = options.n_ctx;
        c.n_threads = options.n_threads;
        c.n_threads_batch = options.n_threads_batch;
        c.n_batch = options.n_batch;
        c.n_ubatch = options.n_ubatch;
        c.flash_attn = options.flash_attn.to_raw();
        c.cache_type_k = k.as_ptr();
        c.cache_type_v = v.as_ptr();
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvstash_session_create(model.raw.as_ptr(), &c, &mut out) })?;
        Ok(Session::from_raw(out))
    }

    /// Loads a session file saved from the same model; every check runs before a byte reaches
    /// llama.cpp. The session then holds the saved tokens: append after them.
    pub fn open(model: &Model, path: impl AsRef<Path>, options: &OpenOptions) -> Result<Session> {
        let path = c_path(path.as_ref())?;
        let k = match &options.cache_type_k {
            Some(k) => Some(c_string("cache_type_k", k)?),
            None => None,
        };
        let v = match &options.cache_type_v {
            Some(v) => Some(c_string("cache_type_v", v)?),
            None => None,
        };
        let mut c = unsafe { c_defaults(sys::kvstash_open_options_init) };
        c.n_ctx = options.n_ctx;
        c.n_room = options.n_room;
        c.n_threads = options.n_threads;
        c.n_threads_batch = options.n_threads_batch;
        c.flash_attn = options.flash_attn.to_raw();
        c.cache_type_k = k.as_ref().map_or(ptr::null(), |k| k.as_ptr());
        c.cache_type_v = v.as_ref().map_or(ptr::null(), |v| v.as_ptr());
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvstash_session_open(model.raw.as_ptr(), path.as_ptr(), &c, &mut out) })?;
        Ok(Session::from_raw(out))
    }

    fn from_raw(raw: *mut sys::kvstash_session) -> Session {
        let raw = NonNull::new(raw).expect("kvstash returned OK and a NULL session");
        Session {
            raw,
            cell: Arc::new(SessionCell {
                raw: Mutex::new(raw.as_ptr()),
            }),
        }
    }

    /// Decodes `text` after what the session holds (the first text of an empty session gets
    /// BOS). On failure the session is as it was.
    pub fn append_text(&mut self, text: &str) -> Result<()> {
        check(unsafe {
            sys::kvstash_session_append_text(self.raw.as_ptr(), text.as_ptr() as *const c_char, text.len())
        })
    }

    /// Decodes `tokens` after what the session holds. On failure the session is as it was.
    pub fn append_tokens(&mut self, tokens: &[Token]) -> Result<()> {
        check(unsafe { sys::kvstash_session_append_tokens(self.raw.as_ptr(), tokens.as_ptr(), tokens.len()) })
    }

    /// Makes the session hold exactly `tokens`, keeping the longest common prefix and decoding
    /// only the tail. With a store, the longest stored prefix of whole chunks is restored and new
    /// chunks are published in the background.
    pub fn sync(&mut self, tokens: &[Token], store: Option<&Store>) -> Result<SyncResult> {
        let mut r = sys::kvstash_sync_result::default();
        // Stores are shared by any number of threads: the C side takes a mutable pointer but
        // synchronizes itself.
        let store = store.map_or(ptr::null_mut(), |s| s.raw.as_ptr());
        check(unsafe {
            sys::kvstash_session_sync(self.raw.as_ptr(), tokens.as_ptr(), tokens.len(), store, &mut r)
        })?;
        Ok(SyncResult {
            n_reused: r.n_reused,
            n_decoded: r.n_decoded,
            n_restored: r.n_restored,
            n_published: r.n_published,
            restore_ms: r.restore_ms,
            decode_ms: r.decode_ms,
        })
    }

    /// Samples until a stop condition; the generated tokens become part of the session.
    pub fn generate(&mut self, options: &SampleOptions) -> Result<Generation> {
        self.generate_raw(options, None, ptr::null_mut())
    }

    /// As [`Session::generate`], calling `on_piece` with each piece of text as soon as it is
    /// final (whole UTF-8 characters). Return false to stop ([`StopReason::Cancelled`]). A panic
    /// in `on_piece` stops the generation and is re-raised when the call returns.
    pub fn generate_stream<F>(&mut self, options: &SampleOptions, mut on_piece: F) -> Result<Generation>
    where
        F: FnMut(&str) -> bool,
    {
        let mut state = StreamState {
            on_piece: &mut on_piece,
            pending: Vec::new(),
            panic: None,
        };
        let result = self.generate_raw(
            options,
            Some(piece_trampoline),
            &mut state as *mut StreamState<'_> as *mut c_void,
        );
        if let Some(payload) = state.panic.take() {
            std::panic::resume_unwind(payload);
        }
        if result.is_ok() && !state.pending.is_empty() {
            // A generation that ended inside a character.
            let rest = String::from_utf8_lossy(&state.pending).into_owned();
            (state.on_piece)(&rest);
        }
        result
    }

    fn generate_raw(
        &mut self,
        options: &SampleOptions,
        on_piece: sys::kvstash_piece_fn,
        user_data: *mut c_void,
    ) -> Result<Generation> {
        let stop: Vec<CString> = options
            .stop
            .iter()
            .map(|s| c_string("a stop string", s))
            .collect::<Result<_>>()?;
        let stop_ptrs: Vec<*const c_char> = stop.iter().map(|s| s.as_ptr()).collect();
        let mut c = unsafe { c_defaults(sys::kvstash_sample_options_init) };
        c.n_predict = options.n_predict;
        c.temp = options.temp;
        c.top_k = options.top_k;
        c.top_p = options.top_p;
        c.min_p = options.min_p;
        c.seed = options.seed;
        c.repeat_penalty = options.repeat_penalty;
        c.repeat_last_n = options.repeat_last_n;
        c.ignore_eos = options.ignore_eos;
        c.stop = if stop_ptrs.is_empty() {
            ptr::null()
        } else {
            stop_ptrs.as_ptr()
        };
        c.n_stop = stop_ptrs.len();
        let mut out = sys::kvstash_generation {
            text: ptr::null_mut(),
            text_len: 0,
            tokens: ptr::null_mut(),
            n_tokens: 0,
            stop_reason: sys::KVSTASH_STOP_MAX_TOKENS,
        };
        let code =
            unsafe { sys::kvstash_session_generate(self.raw.as_ptr(), &c, on_piece, user_data, &mut out) };
        let generation = if code == sys::KVSTASH_OK {
            let text = if out.text.is_null() {
                String::new()
            } else {
                let bytes = unsafe { std::slice::from_raw_parts(out.text as *const u8, out.text_len) };
                String::from_utf8_lossy(bytes).into_owned()
            };
            let tokens = if out.tokens.is_null() {
                Vec::new()
            } else {
                unsafe { std::slice::from_raw_parts(out.tokens, out.n_tokens) }.to_vec()
            };
            Some(Generation {
                text,
                tokens,
                stop_reason: StopReason::from_raw(out.stop_reason),
            })
        } else {
            None
        };
        // Read the message before any other kvstash call.
        let status = check(code);
        unsafe { sys::kvstash_generation_clear(&mut out) };
        status.map(|_| generation.expect("checked OK"))
    }

    /// Writes the session to `path` atomically and durably; on failure the previous file is
    /// untouched.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path, &SaveOptions::default())
    }

    pub fn save_with(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<()> {
        let path = c_path(path.as_ref())?;
        let mut c = unsafe { c_defaults(sys::kvstash_save_options_init) };
        c.sync = options.sync;
        c.replace_any = options.replace_any;
        check(unsafe { sys::kvstash_session_save(self.raw.as_ptr(), path.as_ptr(), &c) })
    }

    /// The logits for the next token (n_vocab floats).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let mut logits = ptr::null_mut();
        let mut n = 0;
        check(unsafe { sys::kvstash_session_logits(self.raw.as_ptr(), &mut logits, &mut n) })?;
        Ok(unsafe { take_vec(logits, n) })
    }

    /// The tokens the session holds (a copy).
    pub fn tokens(&self) -> Vec<Token> {
        let mut n = 0;
        let p = unsafe { sys::kvstash_session_tokens(self.raw.as_ptr(), &mut n) };
        if p.is_null() || n == 0 {
            return Vec::new();
        }
        unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
    }

    /// How many tokens the session holds.
    pub fn n_tokens(&self) -> usize {
        let mut n = 0;
        unsafe { sys::kvstash_session_tokens(self.raw.as_ptr(), &mut n) };
        n
    }

    /// The context size in tokens.
    pub fn n_ctx(&self) -> u32 {
        unsafe { sys::kvstash_session_n_ctx(self.raw.as_ptr()) }
    }

    /// Tokens decoded by this session object (loading a file decodes none).
    pub fn n_decoded(&self) -> usize {
        unsafe { sys::kvstash_session_n_decoded(self.raw.as_ptr()) }
    }

    /// Timings of the [`Session::open`] that made this session (zeros for `create`).
    pub fn open_stats(&self) -> Result<OpenStats> {
        let mut s = sys::kvstash_open_stats::default();
        check(unsafe { sys::kvstash_session_open_stats(self.raw.as_ptr(), &mut s) })?;
        Ok(OpenStats {
            map_ms: s.map_ms,
            verify_ms: s.verify_ms,
            context_ms: s.context_ms,
            restore_ms: s.restore_ms,
            total_ms: s.total_ms,
            file_bytes: s.file_bytes,
        })
    }

    /// A handle that cancels this session's running call from any thread.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            cell: Arc::clone(&self.cell),
        }
    }
}

// ---- Inspect -----------------------------------------------------------------------------------

/// What a session file holds, read without a model ([`inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub format_version: u32,
    pub file_size: u64,
    /// The context the KV was computed in.
    pub n_ctx: u32,
    pub tokens: Vec<Token>,
    pub kv_bytes: u64,
    pub has_logits: bool,
    pub checksums_verified: bool,
    /// E.g. "kvstash 0.2.0".
    pub writer: String,
    /// The llama.cpp commit.
    pub llama_build: String,
    pub model_fingerprint: String,
    pub model_description: String,
    pub model_arch: String,
    pub cache_type_k: String,
    pub cache_type_v: String,
    pub flash_attn: bool,
}

/// Reads and checks a session file's structure and checksums.
pub fn inspect(path: impl AsRef<Path>) -> Result<FileInfo> {
    inspect_with(path, true)
}

/// Reads and checks a session file's structure (and checksums when `verify_checksums`).
pub fn inspect_with(path: impl AsRef<Path>, verify_checksums: bool) -> Result<FileInfo> {
    let path = c_path(path.as_ref())?;
    let mut out = ptr::null_mut();
    check(unsafe { sys::kvstash_inspect(path.as_ptr(), verify_checksums, &mut out) })?;
    struct Owned(*mut sys::kvstash_file_info);
    impl Drop for Owned {
        fn drop(&mut self) {
            unsafe { sys::kvstash_file_info_free(self.0) }
        }
    }
    let owned = Owned(out);
    let i = unsafe { &*owned.0 };
    unsafe {
        Ok(FileInfo {
            format_version: i.format_version,
            file_size: i.file_size,
            n_ctx: i.n_ctx,
            tokens: if i.tokens.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(i.tokens, i.n_tokens).to_vec()
            },
            kv_bytes: i.kv_bytes,
            has_logits: i.has_logits,
            checksums_verified: i.checksums_verified,
            writer: owned_str(i.writer),
            llama_build: owned_str(i.llama_build),
            model_fingerprint: owned_str(i.model_fingerprint),
            model_description: owned_str(i.model_description),
            model_arch: owned_str(i.model_arch),
            cache_type_k: owned_str(i.cache_type_k),
            cache_type_v: owned_str(i.cache_type_v),
            flash_attn: i.flash_attn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}

    #[test]
    fn thread_safety_follows_the_c_api() {
        assert_send::<Model>();
        assert_sync::<Model>();
        assert_send::<Store>();
        assert_sync::<Store>();
        assert_send::<Session>();
        assert_send::<Canceller>();
        assert_sync::<Canceller>();
        assert_send::<Error>();
        assert_sync::<Error>();
    }

    #[test]
    fn stream_state_passes_whole_characters() {
        let mut seen = Vec::new();
        let mut f = |s: &str| {
            seen.push(s.to_string());
            true
        };
        let mut state = StreamState {
            on_piece: &mut f,
            pending: Vec::new(),
            panic: None,
        };
        let e_acute = "é".as_bytes(); // 2 bytes
        assert!(state.feed(b"ab"));
        assert!(state.feed(&e_acute[..1]));
        assert!(state.feed(&e_acute[1..]));
        assert!(state.feed(b"\xffz"));
        drop(state);
        assert_eq!(seen, vec!["ab", "é", "\u{FFFD}z"]);
    }

    #[test]
    fn defaults_come_from_the_library() {
        let s = SessionOptions::default();
        assert_eq!(s.n_ctx, 4096);
        assert_eq!(s.cache_type_k, "f16");
        let o = OpenOptions::default();
        assert_eq!(o.flash_attn, FlashAttn::AsSaved);
        assert_eq!(o.cache_type_k, None);
        let p = SampleOptions::default();
        assert_eq!(p.n_predict, 128);
        assert!(SaveOptions::default().sync);
        assert!(StoreOptions::default().create);
    }

    #[test]
    fn errors_carry_status_and_message() {
        let e = Model::load("/nonexistent/model.gguf").unwrap_err();
        assert_eq!(e.status, Status::NotFound);
        assert!(!e.message.is_empty());
        assert!(e.to_string().contains("not_found"), "{}", e);
        let e = Model::load("a\0b").unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument);
    }
}
