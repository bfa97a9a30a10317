//! kvstash's promises, through the Rust API. Models: KVSTASH_TEST_MODEL and KVSTASH_TEST_MODEL_B
//! (two GGUF files of the same shape and different weights, e.g. `kvstash make-test-model -o
//! a.gguf` and `... -o b.gguf --seed 7`). Unset, every test fails saying so: never a silent pass.
use kvstash::{
    inspect, ChatMessage, Generation, Model, OpenOptions, SampleOptions, Session, SessionOptions, Status,
    StopReason, Store, StoreOptions,
};
use std::path::{Path, PathBuf};
use std::{env, fs, process};

const PREFIX: &str = "You are a helpful assistant for a hardware store. Answer in one sentence. \
                      Opening hours are 8am to 6pm, Monday to Saturday.";
const SUFFIX: &str = " Customer: When do you open on Saturday? Assistant:";

fn model(var: &str) -> Model {
    let path = match env::var(var) {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "{} is not set: these tests need a GGUF model (`kvstash make-test-model -o a.gguf`, and for \
             KVSTASH_TEST_MODEL_B `... -o b.gguf --seed 7`); failing rather than skipping",
            var
        ),
    };
    if env::var_os("KVSTASH_TEST_VERBOSE").is_none() {
        kvstash::set_llama_logs(kvstash::LlamaLogs::Quiet).unwrap();
    }
    Model::load(&path).unwrap_or_else(|e| panic!("cannot load {}: {}", path, e))
}

fn model_a() -> Model {
    model("KVSTASH_TEST_MODEL")
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = env::temp_dir().join(format!("kvstash-rs-{}-{}", process::id(), name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn small_ctx() -> SessionOptions {
    SessionOptions {
        n_ctx: 512,
        ..SessionOptions::default()
    }
}

fn greedy(n: i32) -> SampleOptions {
    SampleOptions {
        n_predict: n,
        temp: 0.0,
        ..SampleOptions::default()
    }
}

fn save_prefix(model: &Model, path: &Path) {
    let mut s = Session::create(model, &small_ctx()).unwrap();
    s.append_text(PREFIX).unwrap();
    s.save(path).unwrap();
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn warm_equals_cold() {
    let model = model_a();
    let dir = TempDir::new("warm");
    let path = dir.path("prefix.kvs");
    save_prefix(&model, &path);

    let mut warm = Session::open(&model, &path, &OpenOptions::default()).unwrap();
    assert_eq!(warm.n_decoded(), 0, "opening decodes nothing");
    warm.append_text(SUFFIX).unwrap();

    let mut cold = Session::create(&model, &small_ctx()).unwrap();
    cold.append_text(PREFIX).unwrap();
    cold.append_text(SUFFIX).unwrap();

    assert_eq!(warm.tokens(), cold.tokens());
    assert!(
        warm.n_decoded() < cold.n_decoded(),
        "the warm session decoded the prefix again"
    );
    let (w, c) = (warm.logits().unwrap(), cold.logits().unwrap());
    assert_eq!(w.len(), model.n_vocab());
    assert!(bits(&w) == bits(&c), "warm and cold logits differ");

    let (wg, cg) = (
        warm.generate(&greedy(16)).unwrap(),
        cold.generate(&greedy(16)).unwrap(),
    );
    assert_eq!(wg, cg);
    assert!(!wg.tokens.is_empty());
}

#[test]
fn wrong_model_is_refused() {
    let (a, b) = (model_a(), model("KVSTASH_TEST_MODEL_B"));
    assert_ne!(a.fingerprint(), b.fingerprint());
    let dir = TempDir::new("wrong");
    let path = dir.path("a.kvs");
    save_prefix(&a, &path);
    let e = Session::open(&b, &path, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.status, Status::Incompatible, "{}", e);
    assert!(!e.message.is_empty());
    // The same file still opens with the right model.
    Session::open(&a, &path, &OpenOptions::default()).unwrap();
}

#[test]
fn hostile_files_are_refused() {
    let model = model_a();
    let dir = TempDir::new("hostile");
    let good = dir.path("good.kvs");
    save_prefix(&model, &good);
    let open = |p: &Path| Session::open(&model, p, &OpenOptions::default()).unwrap_err();

    let mut bytes = fs::read(&good).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let flipped = dir.path("flipped.kvs");
    fs::write(&flipped, &bytes).unwrap();
    let e = open(&flipped);
    assert_eq!(e.status, Status::Corruption, "{}", e);
    assert_eq!(inspect(&flipped).unwrap_err().status, Status::Corruption);

    let truncated = dir.path("truncated.kvs");
    fs::write(&truncated, &bytes[..mid]).unwrap();
    assert_eq!(open(&truncated).status, Status::Corruption);

    let text = dir.path("text.kvs");
    fs::write(&text, "this is not a session file\n").unwrap();
    let e = open(&text);
    assert_eq!(e.status, Status::Corruption, "{}", e);

    let e = open(&dir.path("missing.kvs"));
    assert_eq!(e.status, Status::NotFound, "{}", e);

    // The good one passes all of it.
    let info = inspect(&good).unwrap();
    assert!(info.checksums_verified);
    assert_eq!(info.model_fingerprint, model.fingerprint());
    assert_eq!(info.tokens, model.tokenize(PREFIX, true).unwrap());
}

#[test]
fn streaming_generate() {
    let model = model_a();
    let new_session = || {
        let mut s = Session::create(&model, &small_ctx()).unwrap();
        s.append_text(PREFIX).unwrap();
        s.append_text(SUFFIX).unwrap();
        s
    };

    let mut pieces = Vec::new();
    let streamed: Generation = new_session()
        .generate_stream(&greedy(16), |p| {
            pieces.push(p.to_string());
            true
        })
        .unwrap();
    assert!(!pieces.is_empty());
    assert_eq!(pieces.concat(), streamed.text);
    assert_eq!(streamed, new_session().generate(&greedy(16)).unwrap());

    // Returning false stops after that piece.
    let mut n = 0;
    let stopped = new_session()
        .generate_stream(&greedy(16), |_| {
            n += 1;
            false
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(stopped.stop_reason, StopReason::Cancelled);

    // A panic stops the generation, crosses no C frame and reaches the caller; the session stays
    // usable.
    let mut s = new_session();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.generate_stream(&greedy(16), |_| panic!("boom"));
    }));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    s.append_text(" More.").unwrap();
    s.generate(&greedy(4)).unwrap();
}

#[test]
fn store_sync_twice_reuses_tokens() {
    let model = model_a();
    let dir = TempDir::new("store");
    let store = Store::open_with(
        dir.path("store"),
        &StoreOptions {
            chunk_tokens: 16,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let text = format!("{}{}{}", PREFIX, PREFIX, SUFFIX);
    let tokens = model.tokenize(&text, true).unwrap();
    assert!(tokens.len() > 40, "{} tokens", tokens.len());

    let mut first = Session::create(&model, &small_ctx()).unwrap();
    let r = first.sync(&tokens, Some(&store)).unwrap();
    assert_eq!((r.n_reused, r.n_decoded), (0, tokens.len()));
    assert!(r.n_published >= 32, "{:?}", r);
    let cold_logits = first.logits().unwrap();
    // The same tokens again: the session's own cache, kept in whole chunks (the tail is decoded
    // again in the same groups as before, so the logits stay those of a cold run).
    let again = first.sync(&tokens, Some(&store)).unwrap();
    assert!(again.n_reused >= tokens.len() / 16 * 16, "{:?}", again);
    assert_eq!(
        (again.n_restored, again.n_reused + again.n_decoded),
        (0, tokens.len())
    );
    assert!(bits(&first.logits().unwrap()) == bits(&cold_logits));
    drop(first); // publishes what is still pending
    store.wait_for_writes().unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.chunks >= 2, "{:?}", stats);
    assert_eq!(stats.chunk_tokens, 16);

    // A new session restores the whole chunks from the store and decodes only the rest.
    let mut second = Session::create(&model, &small_ctx()).unwrap();
    let r = second.sync(&tokens, Some(&store)).unwrap();
    assert!(r.n_restored >= 32 && r.n_reused >= r.n_restored, "{:?}", r);
    assert_eq!(r.n_reused + r.n_decoded, tokens.len());
    assert!(
        bits(&second.logits().unwrap()) == bits(&cold_logits),
        "restored and cold logits differ"
    );

    let v = store.verify().unwrap();
    assert_eq!((v.chunks_bad, v.bad_report.as_str()), (0, ""));
    assert!(v.chunks_ok >= 2);
    assert!(store.clear(None).unwrap() >= 2);
    assert_eq!(store.stats().unwrap().chunks, 0);
}

#[test]
fn model_text_and_identity() {
    let model = model_a();
    let tokens = model.tokenize("Hello, world!", false).unwrap();
    assert!(!tokens.is_empty());
    // An SPM vocabulary's tokens of a text start with its space prefix.
    assert_eq!(model.detokenize(&tokens).unwrap().trim_start(), "Hello, world!");
    assert_eq!(model.fingerprint().len(), 32);
    assert!(!model.description().is_empty());
    let prompt = model
        .apply_chat_template(
            &[
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi"),
            ],
            Some("chatml"),
            true,
        )
        .unwrap();
    assert!(prompt.contains("<|im_start|>user\nHi"), "{}", prompt);
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{}", prompt);
}

#[test]
fn a_session_keeps_its_model_alive_and_is_send() {
    let model = model_a();
    let mut s = Session::create(&model, &small_ctx()).unwrap();
    drop(model);
    s.append_text(PREFIX).unwrap();
    let s = std::thread::spawn(move || {
        s.logits().unwrap();
        s
    })
    .join()
    .unwrap();
    assert!(s.n_tokens() > 0);
}

#[test]
fn cancel_stops_the_next_call_and_leaves_the_session_as_it_was() {
    let model = model_a();
    let mut s = Session::create(&model, &small_ctx()).unwrap();
    s.append_text(PREFIX).unwrap();
    let before = s.tokens();
    let canceller = s.canceller();
    std::thread::spawn(move || canceller.cancel()).join().unwrap();
    let e = s.append_text(SUFFIX).unwrap_err();
    assert_eq!(e.status, Status::Cancelled, "{}", e);
    assert_eq!(s.tokens(), before);
    s.append_text(SUFFIX).unwrap();
    // A canceller outliving its session does nothing.
    let late = s.canceller();
    drop(s);
    late.cancel();
}

#[test]
fn context_full_is_an_error() {
    let model = model_a();
    let mut s = Session::create(
        &model,
        &SessionOptions {
            n_ctx: 64,
            ..SessionOptions::default()
        },
    )
    .unwrap();
    let long = PREFIX.repeat(40); // beyond llama.cpp's rounding of n_ctx too
    let e = s.append_text(&long).unwrap_err();
    assert_eq!(e.status, Status::ContextFull, "{}", e);
    assert_eq!(s.n_tokens(), 0);
}

#[test]
fn llama_cpp_sampling_options() {
    let model = model_a();
    let mut s = Session::create(&model, &small_ctx()).unwrap();
    s.append_text(PREFIX).unwrap();
    s.append_text(SUFFIX).unwrap();
    let options = SampleOptions {
        n_predict: 8,
        temp: 0.0,
        ignore_eos: true,
        repeat_penalty: 1.3,
        repeat_last_n: 32,
        ..Default::default()
    };
    let g = s.generate(&options).unwrap();
    assert_eq!(g.tokens.len(), 8);
    assert_eq!(g.stop_reason, StopReason::MaxTokens);
    assert!(g.tokens.iter().all(|t| !model.is_end_of_generation(*t)));
    let batch = SessionOptions {
        n_threads_batch: 1,
        ..small_ctx()
    };
    Session::create(&model, &batch)
        .unwrap()
        .append_text(PREFIX)
        .unwrap();
}

#[test]
fn store_redis_url_is_passed_on() {
    let dir = TempDir::new("store-redis");
    // A URL that cannot be parsed is refused, without its password.
    let e = Store::open_with(
        dir.path("bad"),
        &StoreOptions {
            redis_url: Some("http://user:pa55word@127.0.0.1:1".to_string()),
            ..StoreOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument, "{}", e);
    assert!(e.to_string().contains("redis://") && !e.to_string().contains("pa55word"), "{}", e);
    assert_eq!(StoreOptions::default().redis_url, None);
    // A Redis that is not there: the store works without it (every lookup a miss).
    let model = model_a();
    let store = Store::open_with(
        dir.path("down"),
        &StoreOptions {
            chunk_tokens: 16,
            redis_url: Some("redis://:pa55word@127.0.0.1:1".to_string()),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let tokens = model.tokenize(&format!("{}{}", PREFIX, SUFFIX), true).unwrap();
    let mut s = Session::create(&model, &small_ctx()).unwrap();
    let r = s.sync(&tokens, Some(&store)).unwrap();
    assert_eq!((r.n_restored, r.n_decoded), (0, tokens.len()));
}
