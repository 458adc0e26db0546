//! A minimal tape autograd.
//!
//! Every differentiable op, after computing its forward value on the backend, calls
//! [`record`] with its inputs, its outputs and a closure that maps output gradients to input
//! gradients. Nodes are appended in execution order, so the tape is already a topological
//! order: [`backward`] walks it in reverse. Gradients for a tensor used by several ops are
//! summed; that is how a weight shared by the image and text towers receives both
//! modalities' gradients.
//!
//! The tape is thread-local: model code on one thread builds one graph. Ops run inside
//! rayon but never record from worker threads.

mod gradients;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

pub use gradients::Gradients;

use crate::backend;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// Maps the gradients of a node's outputs (None where an output got no gradient) to the
/// gradients of its inputs. `needs[i]` says whether input i wants one; the closure may
/// return None for inputs that do not.
pub type BackwardFn = Box<dyn FnOnce(&[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    op: &'static str,
    inputs: Vec<(TensorId, bool)>,
    outputs: Vec<TensorId>,
    backward: BackwardFn,
}

#[derive(Default)]
struct Tape {
    nodes: Vec<Node>,
}

thread_local! {
    static TAPE: RefCell<Tape> = RefCell::new(Tape::default());
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record on the tape right now.
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` with recording switched off (evaluation, optimizer updates). Restores the
/// previous state on return, and on unwind.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// Number of nodes on this thread's tape.
pub fn tape_len() -> usize {
    TAPE.with(|t| t.borrow().nodes.len())
}

/// Drops every recorded node (and the activations they hold), e.g. after a forward pass
/// whose loss will not be differentiated.
pub fn clear_tape() {
    TAPE.with(|t| t.borrow_mut().nodes.clear());
}

/// Records one op. Returns the outputs, marked as requiring grad when the node was recorded.
/// Nothing is recorded when grad is disabled or no input requires grad.
pub fn record(
    op: &'static str,
    inputs: &[&Tensor],
    outputs: Vec<Tensor>,
    backward: impl FnOnce(&[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
) -> Vec<Tensor> {
    if !grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return outputs;
    }
    let outputs: Vec<Tensor> = outputs.into_iter().map(|t| t.set_requires_grad(true)).collect();
    let node = Node {
        op,
        inputs: inputs.iter().map(|t| (t.id(), t.requires_grad())).collect(),
        outputs: outputs.iter().map(|t| t.id()).collect(),
        backward: Box::new(backward),
    };
    TAPE.with(|t| t.borrow_mut().nodes.push(node));
    outputs
}

/// Convenience for single-output ops.
pub fn record1(
    op: &'static str,
    inputs: &[&Tensor],
    output: Tensor,
    backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
) -> Tensor {
    let mut out = record(op, inputs, vec![output], move |grads, needs| {
        let dy = grads[0].as_ref().expect("a single-output node runs only with its gradient");
        backward(dy, needs)
    });
    out.pop().expect("one output in, one out")
}

/// Differentiates the scalar `loss` with respect to every tensor that requires grad and
/// led to it. Consumes the tape. Returns the gradients of the leaves (parameters, inputs
/// marked with `set_requires_grad`).
pub fn backward(loss: &Tensor) -> Result<Gradients> {
    backward_watching(loss, &[], |_, _| Ok(()))
}

/// [`backward`], calling `ready` once for each tensor of `watched` that an op on the tape
/// takes, as soon as its gradient is final: right after the backward of the first op that
/// took it (the last the reverse walk meets), while the rest of the backward is still to run.
/// `ready` gets the gradients so far, where the tensor's is (or is absent, when no path from
/// the loss reaches it). Data-parallel training starts summing a bucket of gradients across
/// ranks there, so the sums overlap the rest of the backward.
pub fn backward_watching(
    loss: &Tensor,
    watched: &[TensorId],
    mut ready: impl FnMut(&mut Gradients, TensorId) -> Result<()>,
) -> Result<Gradients> {
    if loss.numel() != 1 {
        return Err(Error::shape("backward", format!("loss must have one element, shape is {}", loss.shape())));
    }
    if !loss.requires_grad() {
        return Err(Error::invalid("backward", "loss does not depend on any tensor that requires grad"));
    }
    let nodes = TAPE.with(|t| std::mem::take(&mut t.borrow_mut().nodes));
    let final_after = final_gradients(&nodes, watched);
    let seed = Tensor::full(loss.shape().clone(), 1.0, loss.dtype()).to_device(loss.device())?;
    let mut pending = Gradients::default();
    pending.accumulate(loss.id(), seed)?;

    no_grad(|| {
        for (index, node) in nodes.into_iter().enumerate().rev() {
            let out_grads: Vec<Option<Tensor>> = node.outputs.iter().map(|id| pending.take(*id)).collect();
            if out_grads.iter().any(Option::is_some) {
                let needs: Vec<bool> = node.inputs.iter().map(|(_, n)| *n).collect();
                let in_grads = (node.backward)(&out_grads, &needs)?;
                if in_grads.len() != node.inputs.len() {
                    return Err(Error::invalid(
                        node.op,
                        format!("backward returned {} gradients for {} inputs", in_grads.len(), node.inputs.len()),
                    ));
                }
                for ((id, needed), grad) in node.inputs.iter().zip(in_grads) {
                    if let (true, Some(g)) = (needed, grad) {
                        pending.accumulate(*id, g)?;
                    }
                }
            }
            for &id in final_after.get(&index).into_iter().flatten() {
                ready(&mut pending, id)?;
            }
        }
        Ok(())
    })?;
    Ok(pending)
}

/// For each node index, the watched tensors whose gradient is final once that node's backward
/// has run: those whose first consumer on the tape (in forward order) it is.
fn final_gradients(nodes: &[Node], watched: &[TensorId]) -> HashMap<usize, Vec<TensorId>> {
    let mut after: HashMap<usize, Vec<TensorId>> = HashMap::new();
    if watched.is_empty() {
        // Every plain backward: no walk over the tape's inputs.
        return after;
    }
    let mut unseen: HashSet<TensorId> = watched.iter().copied().collect();
    for (index, node) in nodes.iter().enumerate() {
        for &(id, needed) in &node.inputs {
            if needed && unseen.remove(&id) {
                after.entry(index).or_default().push(id);
            }
        }
    }
    after
}

/// Sum of two gradients of the same tensor, through the backend (never recorded).
pub(crate) fn add_grads(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shape("grad accumulate", format!("{} vs {}", a.shape(), b.shape())));
    }
    backend::get(a.device()).binary(backend::BinaryOp::Add, a, b)
}
