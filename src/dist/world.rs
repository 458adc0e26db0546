//! Where this process sits in a data-parallel world, read from the variables torchrun (and
//! Slurm scripts written for it) set, so existing cluster launchers start msclip unchanged.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// One process's place in the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldPlace {
    /// RANK: this process's index among all processes.
    pub rank: usize,
    /// WORLD_SIZE: the number of processes.
    pub world_size: usize,
    /// LOCAL_RANK: this process's index on its node, which picks its GPU.
    pub local_rank: usize,
    /// MASTER_ADDR:MASTER_PORT, where rank 0 listens for the others.
    pub master: String,
}

impl WorldPlace {
    /// The place torchrun's variables give, or None when WORLD_SIZE is unset (one process).
    pub fn from_env() -> Result<Option<WorldPlace>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`WorldPlace::from_env`] over any lookup of the variables, so tests need not touch the
    /// process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<WorldPlace>> {
        let Some(world_size) = var("WORLD_SIZE") else { return Ok(None) };
        let number = |name: &str, value: Option<String>| -> Result<usize> {
            let value = value.ok_or_else(|| {
                Error::config(format!("WORLD_SIZE is set, so {name} must be too (torchrun sets both)"))
            })?;
            value.trim().parse().map_err(|_| Error::config(format!("{name}={value:?} is not a non-negative integer")))
        };
        let world_size = number("WORLD_SIZE", Some(world_size))?;
        let rank = number("RANK", var("RANK"))?;
        // A launcher that starts one process per node may leave LOCAL_RANK out: the GPU is 0.
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v))?,
            None => 0,
        };
        if world_size == 0 || rank >= world_size {
            return Err(Error::config(format!(
                "RANK={rank} must lie below WORLD_SIZE={world_size} (and that above 0)"
            )));
        }
        let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = number("MASTER_PORT", Some(var("MASTER_PORT").unwrap_or_else(|| "29500".into())))?;
        if port == 0 || port > u16::MAX as usize {
            return Err(Error::config(format!("MASTER_PORT={port} is not a TCP port")));
        }
        Ok(Some(WorldPlace { rank, world_size, local_rank, master: format!("{addr}:{port}") }))
    }

    /// The master's socket address, resolved.
    pub fn master_addr(&self) -> Result<SocketAddr> {
        let unresolved =
            || Error::config(format!("MASTER_ADDR:MASTER_PORT {} does not resolve to an address", self.master));
        self.master.to_socket_addrs().map_err(|_| unresolved())?.next().ok_or_else(unresolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn place(vars: &[(&str, &str)]) -> Result<Option<WorldPlace>> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        WorldPlace::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn torchruns_variables_place_the_process() {
        assert_eq!(place(&[]).unwrap(), None, "no WORLD_SIZE: one process");
        let vars = [
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
        ];
        let p = place(&vars).unwrap().unwrap();
        assert_eq!(p, WorldPlace { rank: 5, world_size: 8, local_rank: 1, master: "10.0.0.2:29400".into() });
        assert_eq!(p.master_addr().unwrap().port(), 29400);
        // Defaults: torchrun's port, the local host, GPU 0.
        let p = place(&[("WORLD_SIZE", "2"), ("RANK", "0")]).unwrap().unwrap();
        assert_eq!((p.local_rank, p.master.as_str()), (0, "127.0.0.1:29500"));
    }

    #[test]
    fn a_wrong_variable_is_named() {
        for (vars, says) in [
            (vec![("WORLD_SIZE", "2")], "RANK must be too"),
            (vec![("WORLD_SIZE", "two"), ("RANK", "0")], "WORLD_SIZE=\"two\""),
            (vec![("WORLD_SIZE", "2"), ("RANK", "2")], "RANK=2 must lie below WORLD_SIZE=2"),
            (vec![("WORLD_SIZE", "0"), ("RANK", "0")], "RANK=0 must lie below WORLD_SIZE=0"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "70000")], "MASTER_PORT=70000"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "-1")], "LOCAL_RANK=\"-1\""),
        ] {
            let err = place(&vars).unwrap_err().to_string();
            assert!(err.contains(says), "{vars:?}: {err}");
        }
    }
}
