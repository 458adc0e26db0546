//! Kernel parity (testing ladder, level 2) for kernels/layout.cu: data movement on the GPU
//! devices (the emulator always, CUDA when present) against the CPU backend. Moves are exact,
//! so results must be equal, not close; the scatter-add of embedding gradients sums in the
//! CPU's order, so it is exact too. Shapes are ragged (size-1 dims, widths that are not
//! multiples of the 16-byte access unit) next to shapes where the wide units kick in.

mod common;

use common::gpu::{gpu_devices, on, randn_as};
use msclip::backend::gpu::counters::measure;
use msclip::backend::{self, Backend};
use msclip::tensor::Table;
use msclip::{DType, Device, Result, Rng, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// `f` on the CPU (f32) and on every GPU device in each dtype, from the same random inputs of
/// the given shapes (values representable in the dtype): the results must be identical to the
/// CPU's rounded to the dtype (a no-op for moves; one rounding of the same sum for scatter-adds).
fn same_as_cpu(what: &str, seed: u64, shapes: &[&[usize]], f: impl Fn(&dyn Backend, &[Tensor]) -> Result<Tensor>) {
    for dtype in DTYPES {
        let mut rng = Rng::new(seed);
        let inputs: Vec<Tensor> = shapes.iter().map(|s| randn_as(&mut rng, s, 1.0, dtype)).collect();
        let want = f(backend::get(Device::Cpu), &inputs).unwrap_or_else(|e| panic!("{what}: CPU: {e}"));
        let (want_dims, want) = (want.dims().to_vec(), want.to_dtype(dtype).unwrap().to_f64_vec());
        for device in gpu_devices() {
            let on_device: Vec<Tensor> = inputs.iter().map(|t| on(t, device, dtype)).collect();
            let got = f(backend::get(device), &on_device).unwrap_or_else(|e| panic!("{what} {dtype} on {device}: {e}"));
            assert_eq!(got.dims(), want_dims, "{what} {dtype} on {device}: shape");
            assert_eq!(got.dtype(), dtype, "{what} on {device}: dtype");
            assert_eq!(got.to_f64_vec(), want, "{what} {dtype} on {device}");
        }
    }
}

/// Every permutation of 0..n, in lexicographic order.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for first in 0..n {
        for rest in permutations(n - 1) {
            let mut p = vec![first];
            p.extend(rest.into_iter().map(|r| if r >= first { r + 1 } else { r }));
            out.push(p);
        }
    }
    out
}

#[test]
fn transposes_of_the_two_innermost_dims_run_in_tiles_with_ragged_edges() {
    // [planes, rows, cols] -> [planes, cols, rows] with partial 32 x 32 tiles on both edges, a
    // plain 2-D transpose, and NCHW maps to tokens (a size-1 dim in between collapses away).
    let cases: [(&[usize], &[usize]); 4] =
        [(&[3, 37, 45], &[0, 2, 1]), (&[70, 33], &[1, 0]), (&[2, 8, 1, 9], &[0, 2, 3, 1]), (&[1, 64, 32], &[0, 2, 1])];
    for (dims, perm) in cases {
        let what = format!("transpose {dims:?} by {perm:?}");
        let (_, counts) = measure(|| same_as_cpu(&what, 2, &[dims], |be, t| be.permute(&t[0], perm)));
        let kernels: Vec<&String> = counts.launches_by_kernel.keys().collect();
        assert!(kernels.iter().all(|k| k.starts_with("transpose_b")), "{what}: launched {kernels:?}");
        assert!(!kernels.is_empty(), "{what}: no transpose launched");
    }
}

#[test]
fn permutes_of_every_rank_up_to_six() {
    let mut cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![], vec![]),
        (vec![1], vec![0]),
        (vec![3, 5], vec![1, 0]),
        (vec![2, 1, 3, 5], vec![3, 0, 2, 1]),
        (vec![2, 3, 1, 4, 3, 2], vec![5, 3, 1, 0, 4, 2]),
        // Attention-style head splits: the inner run of 16 moves in 16-byte units.
        (vec![4, 7, 2, 16], vec![0, 2, 1, 3]),
        (vec![3, 33, 8], vec![1, 0, 2]),
        (vec![5, 1, 7], vec![0, 1, 2]),
    ];
    cases.extend(permutations(3).into_iter().map(|p| (vec![2, 3, 4], p)));
    cases.extend(permutations(4).into_iter().map(|p| (vec![3, 1, 5, 2], p)));
    for (dims, perm) in cases {
        same_as_cpu(&format!("permute {dims:?} by {perm:?}"), 1, &[&dims], |be, t| be.permute(&t[0], &perm));
    }
}

#[test]
fn slices_and_their_adjoint() {
    let cases: [(&[usize], usize, usize, usize); 9] = [
        (&[7], 0, 2, 3),
        (&[7], 0, 0, 7),
        (&[3, 33], 1, 1, 31),
        (&[3, 33], 0, 2, 1),
        (&[2, 77, 5], 1, 76, 1),
        (&[2, 77, 5], 2, 1, 3),
        (&[4, 16], 1, 8, 8),
        (&[4, 32], 1, 0, 16),
        (&[3, 4], 1, 2, 0),
    ];
    for (shape, dim, start, len) in cases {
        same_as_cpu(&format!("slice {shape:?} dim {dim} {start}+{len}"), 2, &[shape], |be, t| {
            be.slice(&t[0], dim, start, len)
        });
        let mut part = shape.to_vec();
        part[dim] = len;
        same_as_cpu(&format!("pad_slice {part:?} dim {dim} at {start}"), 3, &[&part], |be, t| {
            be.pad_slice(&t[0], dim, start, shape[dim])
        });
    }
}

#[test]
fn concats_along_every_dim() {
    let cases: [(&[&[usize]], usize); 6] = [
        (&[&[1], &[1]], 0),
        (&[&[2, 3, 5], &[2, 1, 5], &[2, 4, 5]], 1),
        (&[&[2, 3, 5], &[1, 3, 5]], 0),
        (&[&[2, 3, 5], &[2, 3, 3], &[2, 3, 1]], 2),
        (&[&[3, 8], &[3, 16]], 1),
        (&[&[4, 33], &[4, 0], &[4, 2]], 1),
    ];
    for (shapes, dim) in cases {
        same_as_cpu(&format!("concat {shapes:?} along {dim}"), 4, shapes, |be, t| {
            let refs: Vec<&Tensor> = t.iter().collect();
            be.concat(&refs, dim)
        });
    }
}

#[test]
fn repeats_over_a_middle_dimension() {
    for [outer, n, inner] in [[1, 1, 1], [3, 5, 1], [2, 7, 33], [4, 3, 16], [1, 2, 769]] {
        same_as_cpu(&format!("repeat_middle {outer}x{n}x{inner}"), 5, &[&[outer, inner]], |be, t| {
            be.repeat_middle(&t[0], outer, n, inner)
        });
    }
}

/// Ids with repeats, in no order, leaving some rows unreferenced.
fn ids(rng: &mut Rng, n: usize, rows: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(rows.div_ceil(2)) as u32 * 2 % rows as u32).collect()
}

#[test]
fn row_gathers_and_their_deterministic_scatter_add() {
    let mut rng = Rng::new(6);
    for [rows, d, n] in [[1, 1, 1], [10, 1, 25], [50, 33, 40], [7, 16, 9], [3, 769, 5], [9, 8, 0]] {
        let picked = ids(&mut rng, n, rows);
        same_as_cpu(&format!("index_rows {rows}x{d} by {n} ids"), 7, &[&[rows, d]], |be, t| {
            be.index_rows(&t[0], &Table::new(picked.clone()))
        });
        // The GPU adds each row's gradients in increasing position in fp32, exactly as the CPU
        // does in f32, so even bf16 results (one rounding of the same sum) are identical.
        same_as_cpu(&format!("index_rows_backward {n} ids into {rows}x{d}"), 8, &[&[n, d]], |be, t| {
            be.index_rows_backward(&t[0], &Table::new(picked.clone()), rows)
        });
    }
}

#[test]
fn bad_ids_and_f64_inputs_are_refused_with_clear_errors() {
    let be = backend::get(Device::Emu);
    let table = on(&Tensor::zeros([4, 3], DType::F32), Device::Emu, DType::F32);
    let message = be.index_rows(&table, &Table::new(vec![1, 4])).unwrap_err().to_string();
    assert!(message.contains("id 4") && message.contains("4 rows"), "{message}");
    let message = be.index_rows_backward(&table, &Table::new(vec![0, 1, 2, 9]), 5).unwrap_err().to_string();
    assert!(message.contains("id 9"), "{message}");

    let x = Tensor::zeros([2, 3], DType::F64).to_device(Device::Emu).unwrap();
    let errors = [
        be.permute(&x, &[1, 0]).err(),
        be.slice(&x, 1, 0, 2).err(),
        be.pad_slice(&x, 1, 0, 4).err(),
        be.concat(&[&x, &x], 0).err(),
        be.repeat_middle(&x, 2, 2, 3).err(),
        be.index_rows(&x, &Table::new(vec![0])).err(),
        be.index_rows_backward(&x, &Table::new(vec![0, 1]), 2).err(),
    ];
    for (i, e) in errors.into_iter().enumerate() {
        let message = e.unwrap_or_else(|| panic!("op {i} accepted f64")).to_string();
        assert!(message.contains("f64"), "op {i}: {message}");
    }
}
