//! Small tables of 32-bit words that the host computes and kernels read: token ids, sequence
//! offsets, the rows a gather picks, an optimizer step's hyperparameters.
//!
//! A table is uploaded to a GPU device once, when a kernel first needs it there, and then shared
//! by every launch that reads it (the offsets of a caption batch serve all the layers' attention
//! calls, forward and backward). Its contents can be rewritten in place, device copy included:
//! that is how a captured graph ([`crate::backend::gpu::graph`]) gets the next step's inputs,
//! since its kernels read the table's address, fixed at capture, and nothing in the graph
//! uploads it. Tables derived from a table (a gather's scatter plan for its backward pass) are
//! recomputed and rewritten with it.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::gpu::buffer::Scratch;
use crate::backend::gpu::{self, DevicePtr};
use crate::error::{Error, Result};
use crate::tensor::Device;

/// How a derived table is computed from its source's words.
type Derive = Box<dyn Fn(&[u32]) -> Vec<u32> + Send + Sync>;

#[derive(Clone)]
pub struct Table(Arc<Inner>);

thread_local! {
    /// While [`find_tables`] runs on this thread: the tables asked for on a device that had no
    /// copy there yet.
    static FOUND: RefCell<Option<Vec<Table>>> = const { RefCell::new(None) };
}

/// Runs `work` (a graph capture that will be thrown away) with every table it asks for on a
/// device where the table has no copy yet left without one, and returns those tables: upload
/// them, then capture again, and the second graph reads them all from their device copies. A
/// table made inside a capture (one derived from the captions, say) would otherwise upload as
/// part of the graph, whose every launch would then write the capture's words over a rewrite.
/// Inside `work` such tables read as address 0, which is why its graph must never run.
pub fn find_tables<R>(work: impl FnOnce() -> R) -> (R, Vec<Table>) {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            FOUND.set(None);
        }
    }
    FOUND.set(Some(Vec::new()));
    let stop = Stop;
    let result = work();
    let found = FOUND.take().unwrap_or_default();
    drop(stop);
    (result, found)
}

struct Inner {
    state: Mutex<State>,
}

struct State {
    words: Arc<[u32]>,
    /// The copy kernels read, on the one device that asked for it.
    device: Option<Scratch>,
    /// Tables computed from this one, by key, each with its recipe.
    derived: Vec<(String, Table, Derive)>,
}

impl Table {
    pub fn new(words: Vec<u32>) -> Table {
        Table(Arc::new(Inner { state: Mutex::new(State { words: words.into(), device: None, derived: Vec::new() }) }))
    }

    /// Counts as the kernels' `int`s: an error names `what` when one does not fit.
    pub fn of_counts(values: &[usize], what: &str) -> Result<Table> {
        let words = values
            .iter()
            .map(|&v| {
                i32::try_from(v)
                    .map(|v| v as u32)
                    .map_err(|_| Error::invalid("table", format!("{what} {v} exceeds i32")))
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Table::new(words))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The words as the host last wrote them.
    pub fn words(&self) -> Arc<[u32]> {
        self.state().words.clone()
    }

    pub fn len(&self) -> usize {
        self.state().words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on a device.
    pub fn bytes(&self) -> usize {
        self.len() * 4
    }

    /// The address of the table on `device`, uploaded now if it is not there yet. Inside a
    /// graph capture, that first upload becomes part of the graph (a constant of it): upload an
    /// input table before the capture so the graph reads whatever it holds at each launch.
    pub fn device_ptr(&self, device: Device) -> Result<DevicePtr> {
        let mut state = self.state();
        match &state.device {
            Some(copy) if copy.device() == device => Ok(copy.ptr()),
            _ if FOUND.with_borrow(Option::is_some) => {
                FOUND.with_borrow_mut(|found| found.as_mut().expect("checked").push(self.clone()));
                Ok(0)
            }
            _ => {
                let copy = Scratch::from_slice(device, &state.words)?;
                let ptr = copy.ptr();
                state.device = Some(copy);
                Ok(ptr)
            }
        }
    }

    /// Replaces the words (the same number of them) and the device copy's, in the device's
    /// stream order: kernels queued before read the old words, kernels queued after the new.
    /// Derived tables are recomputed and rewritten too.
    pub fn rewrite(&self, words: &[u32]) -> Result<()> {
        let mut state = self.state();
        if words.len() != state.words.len() {
            return Err(Error::shape("table", format!("{} words for a table of {}", words.len(), state.words.len())));
        }
        if let Some(copy) = &state.device {
            gpu::driver(copy.device())?.upload(copy.ptr(), bytemuck::cast_slice(words))?;
        }
        state.words = words.into();
        for (_, table, derive) in &state.derived {
            table.rewrite(&derive(words))?;
        }
        Ok(())
    }

    /// The table `derive` computes from this one's words, made once per `key` and kept in step
    /// with this one by [`Table::rewrite`]. `derive` must give the same length for any words
    /// the table may hold.
    pub fn derived(&self, key: &str, derive: impl Fn(&[u32]) -> Vec<u32> + Send + Sync + 'static) -> Table {
        let mut state = self.state();
        if let Some((_, table, _)) = state.derived.iter().find(|(k, _, _)| k == key) {
            return table.clone();
        }
        let table = Table::new(derive(&state.words));
        state.derived.push((key.to_string(), table.clone(), Box::new(derive)));
        table
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({:?})", self.words())
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.words() == other.words()
    }
}

impl Eq for Table {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_tables_follow_a_rewrite() {
        let ids = Table::new(vec![3, 1, 2]);
        let sum = ids.derived("sum", |w| vec![w.iter().sum()]);
        assert_eq!(&*sum.words(), &[6]);
        // The same key gives the same table.
        assert_eq!(&*ids.derived("sum", |_| vec![0]).words(), &[6]);
        ids.rewrite(&[5, 5, 5]).unwrap();
        assert_eq!(&*sum.words(), &[15]);
        assert!(ids.rewrite(&[1]).is_err(), "the length is fixed");
    }

    #[test]
    fn finding_tables_leaves_them_without_a_device_copy() {
        let (a, b) = (Table::new(vec![1]), Table::new(vec![2]));
        b.device_ptr(Device::Emu).unwrap();
        let (ptrs, found) = find_tables(|| [a.device_ptr(Device::Emu).unwrap(), b.device_ptr(Device::Emu).unwrap()]);
        assert_eq!(ptrs[0], 0);
        assert_ne!(ptrs[1], 0, "a table already on the device keeps its copy");
        assert_eq!(found, vec![a.clone()]);
        assert_ne!(a.device_ptr(Device::Emu).unwrap(), 0, "uploaded as usual afterwards");
    }

    #[test]
    fn a_rewrite_reaches_the_device_copy() {
        let table = Table::new(vec![1, 2, 3]);
        let ptr = table.device_ptr(Device::Emu).unwrap();
        table.rewrite(&[7, 8, 9]).unwrap();
        assert_eq!(table.device_ptr(Device::Emu).unwrap(), ptr, "the same address after a rewrite");
        let mut back = [0u8; 12];
        gpu::driver(Device::Emu).unwrap().download(ptr, &mut back).unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, u32>(&back), &[7, 8, 9]);
        assert!(Table::of_counts(&[usize::MAX], "offset").is_err());
    }
}
