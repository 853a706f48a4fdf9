//! The compile thread: reads the datastore, overlays the CNI plugin's registrations, checks
//! the detector's resources and compiles this node's policy into map entries. It runs beside
//! the agent thread, which owns the maps and writes the result: however long a compile takes,
//! the agent thread keeps answering the detector, the CNI plugin and queries meanwhile.

use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use policy_compiler::{compile::{Compiled, Compiler}, model::Model};

use crate::{
    apply::KernelState,
    datastore::Datastore,
    detect::{self, policy::Plan},
    endpoints::Registry,
    error::AgentError,
};

/// One request for a compile.
pub(crate) struct Job {
    /// The CNI registrations as they stand when the job is sent.
    pub registry: Registry,
    /// Read and compile even when the datastore reports no change (a caller waits for the
    /// result, or something outside the datastore changed: registrations, interfaces).
    pub force: bool,
}

/// What a compile produced, for the agent thread to write.
pub(crate) struct Ready {
    pub model: Model,
    pub compiled: Compiled,
    pub kernel: KernelState,
    pub plan: Plan,
    /// Datastore documents rejected on their own (their last good version applies).
    pub rejected: Vec<String>,
    pub load_time: Duration,
    pub compile_time: Duration,
}

/// The outcome of one [`Job`].
pub(crate) enum Outcome {
    /// The datastore had not changed and the job was not forced: nothing to write.
    Unchanged,
    Ready(Box<Ready>),
    /// Bad input: nothing applies, the enforced state stays as it was.
    Failed(AgentError),
}

/// The agent's handle on the compile thread; dropping it ends the thread.
pub(crate) struct CompileThread {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl CompileThread {
    /// Starts the thread; each job's outcome goes to `done` (which returns false once the
    /// agent is gone).
    pub fn spawn(mut store: Box<dyn Datastore>, mut compiler: Compiler, done: impl Fn(Outcome) -> bool + Send + 'static) -> Result<CompileThread, AgentError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("bh-compile".into())
            .spawn(move || {
                let _g = span.enter();
                for job in rx {
                    let outcome = if !job.force && !store.poll_changed() { Outcome::Unchanged } else { run(store.as_mut(), &mut compiler, &job.registry) };
                    if !done(outcome) {
                        break;
                    }
                }
            })
            .map_err(|_| AgentError::Stopped)?;
        Ok(CompileThread { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues a job; false when the thread is gone.
    pub fn send(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }
}

impl Drop for CompileThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the job at hand.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &mut dyn Datastore, compiler: &mut Compiler, registry: &Registry) -> Outcome {
    let span = tracing::info_span!("compile");
    let _g = span.enter();
    let t0 = Instant::now();
    let loaded = store.load().and_then(|m| Ok((m, store.load_detector()?)));
    let (mut model, mut detector_input) = match loaded {
        Ok(x) => x,
        Err(e) => return Outcome::Failed(e),
    };
    registry.overlay(&mut model, &mut detector_input);
    let load_time = t0.elapsed();
    let rejected = store.rejected();
    // Detector resources are checked before anything applies: a bad one rejects the sync.
    let plan = match detect::policy::plan(&detector_input, &model) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(AgentError::Invalid(e)),
    };
    let compiled = match compiler.compile(&model) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(AgentError::Policy(Box::new(e))),
    };
    let kernel = KernelState::of(&compiled);
    let compile_time = t0.elapsed() - load_time;
    Outcome::Ready(Box::new(Ready { model, compiled, kernel, plan, rejected, load_time, compile_time }))
}
