//! The session-file guide's flow (save a system prompt's KV cache, load it, continue generating)
//! in kvstash: no positions, no batches, no buffer capacities.
//!
//!     cargo run --example guide -- MODEL.gguf
use kvstash::{Model, OpenOptions, SampleOptions, Session, SessionOptions};
use std::io::Write;

fn main() -> kvstash::Result<()> {
    let model_path = std::env::args().nth(1).expect("usage: guide MODEL.gguf");
    let session_path = std::env::temp_dir().join("kvstash-guide.kvs");
    let model = Model::load(&model_path)?;

    // Save (once): decode the system prompt and keep its KV cache in a file.
    let mut session = Session::create(&model, &SessionOptions::default())?;
    session.append_text("You are a helpful assistant for a hardware store. Answer in one sentence.")?;
    session.save(&session_path)?;

    // Load (every request): the cache comes back with its tokens; append only what is new.
    let mut session = Session::open(&model, &session_path, &OpenOptions::default())?;
    session.append_text(" Customer: When do you open on Saturday? Assistant:")?;
    let sampling = SampleOptions {
        n_predict: 32,
        stop: vec!["\nCustomer:".into()],
        ..Default::default()
    };
    let answer = session.generate_stream(&sampling, |piece| {
        print!("{}", piece);
        std::io::stdout().flush().is_ok()
    })?;
    println!("\n[{} tokens, {:?}]", answer.tokens.len(), answer.stop_reason);
    Ok(())
}
