//! GEMMs on cuBLASLt with a plan per shape: the matrix layouts, the matmul descriptor and the
//! algorithm its heuristic chose are built the first time a (spec, epilogue) pair is seen and kept,
//! so a training step, which repeats the same few dozen shapes, asks the heuristic nothing after
//! its first run and only passes pointers. The spec holds the batch strides, so a shared operand
//! (stride 0) gets a plan of its own: its layout and the alignments the heuristic was told
//! differ from the back-to-back batch's.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::sys as cu_sys;

use super::blas_error;
use crate::backend::gpu::driver::{DevicePtr, EpilogueKind, GemmEpilogue, GemmSpec, GemmType};
use crate::error::Result;

/// cuBLASLt's scratch space; 32 MiB is what its heuristics want for large bf16 GEMMs on Hopper.
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Everything cuBLASLt needs for one shape except the pointers.
struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    /// First operand (our B), second (our A), output.
    layouts: [lt_sys::cublasLtMatrixLayout_t; 3],
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

#[derive(Default)]
pub struct GemmPlans {
    plans: BTreeMap<(GemmSpec, EpilogueKind), Plan>,
    /// Specs for which the heuristic found no algorithm with the bias-gradient epilogue.
    no_bias_grad: BTreeSet<GemmSpec>,
}

// SAFETY: the descriptors are plain handles; the driver keeps the plans behind a mutex.
unsafe impl Send for GemmPlans {}

impl GemmPlans {
    /// `C = op(A) op(B) (+ bias)` for row-major operands, as cuBLASLt's column-major
    /// `C^T = op(B)^T op(A)^T`: B is cuBLASLt's first operand, A its second, and a row-major
    /// matrix is its own transpose in column-major order, so the transposes carry over unchanged.
    ///
    /// # Safety
    /// The context is current; the pointers hold the operands `spec` describes; `workspace` holds
    /// [`WORKSPACE_BYTES`]; `stream` is the context's stream.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        &mut self,
        blas: lt_sys::cublasLtHandle_t,
        workspace: DevicePtr,
        stream: cu_sys::CUstream,
        spec: GemmSpec,
        (a, b, epilogue, c): (DevicePtr, DevicePtr, GemmEpilogue, DevicePtr),
    ) -> Result<()> {
        // SAFETY: the caller's context.
        let plan = unsafe { self.plan(blas, spec, epilogue.kind())? };
        if let GemmEpilogue::Bias(bias) | GemmEpilogue::BiasGrad(bias) = epilogue {
            // SAFETY: a device pointer, as the attribute documents.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (&bias as *const DevicePtr).cast(),
                    8,
                )
            }
            .map_err(|e| blas_error("bias pointer", e))?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let [first, second, out] = plan.layouts;
        // SAFETY: the plan's descriptors; operand pointers per the caller's contract.
        unsafe {
            lt::matmul(
                blas,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                b as *const c_void,
                first,
                a as *const c_void,
                second,
                c as *const c_void,
                out,
                c as *mut c_void,
                out,
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream as lt_sys::cudaStream_t,
            )
        }
        .map_err(|e| blas_error(&format!("matmul {spec:?}"), e))
    }

    /// The plan of `spec` with an epilogue of `kind`, built on first use.
    ///
    /// # Safety
    /// The context is current.
    unsafe fn plan(&mut self, blas: lt_sys::cublasLtHandle_t, spec: GemmSpec, kind: EpilogueKind) -> Result<&Plan> {
        match self.plans.entry((spec, kind)) {
            std::collections::btree_map::Entry::Occupied(cached) => Ok(cached.into_mut()),
            // SAFETY: the caller's context.
            std::collections::btree_map::Entry::Vacant(slot) => {
                Ok(slot.insert(unsafe { Plan::new(blas, spec, kind)? }))
            }
        }
    }

    /// Whether the heuristic has an algorithm for `spec` with the bias-gradient epilogue; the
    /// answer is kept, and so is the plan when there is one.
    ///
    /// # Safety
    /// The context is current.
    pub unsafe fn has_bias_grad(&mut self, blas: lt_sys::cublasLtHandle_t, spec: GemmSpec) -> bool {
        if self.no_bias_grad.contains(&spec) {
            return false;
        }
        // SAFETY: the caller's context.
        let found = unsafe { self.plan(blas, spec, EpilogueKind::BiasGrad) }.is_ok();
        if !found {
            self.no_bias_grad.insert(spec);
        }
        found
    }
}

/// The largest power of two, at most 256, that divides `bytes`: the alignment every batch
/// element of an operand keeps when the first one is 256-byte aligned (as every allocation is).
fn alignment_of(bytes: usize) -> u32 {
    if bytes == 0 { 256 } else { 1 << bytes.trailing_zeros().min(8) }
}

impl Plan {
    /// # Safety
    /// The context is current.
    unsafe fn new(blas: lt_sys::cublasLtHandle_t, spec: GemmSpec, kind: EpilogueKind) -> Result<Plan> {
        use lt_sys::cublasLtMatmulDescAttributes_t as Desc;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        use lt_sys::cublasLtMatrixLayoutAttribute_t as Layout;
        let GemmSpec { batch, m, n, k, trans_a, trans_b, dtype, batch_strides: [a_stride, b_stride, c_stride] } = spec;
        let data_type = match dtype {
            GemmType::F32 => lt_sys::cudaDataType::CUDA_R_32F,
            GemmType::BF16 => lt_sys::cudaDataType::CUDA_R_16BF,
        };
        // Stored (column-major) shapes: B is n x k (k x n when trans_b), A is k x m (m x k when trans_a).
        let shapes = [if trans_b { (k, n) } else { (n, k) }, if trans_a { (m, k) } else { (k, m) }, (n, m)];
        // Batch strides in the same order. A stride of 0 makes every batch entry read the same
        // matrix, as torch's bmm on an expanded tensor has cuBLASLt do.
        let strides = [b_stride, a_stride, c_stride];
        let mut layouts = [std::ptr::null_mut(); 3];
        for (slot, (&(rows, cols), &stride)) in layouts.iter_mut().zip(shapes.iter().zip(&strides)) {
            let l = lt::create_matrix_layout(data_type, rows as u64, cols as u64, rows as i64)
                .map_err(|e| blas_error("matrix layout", e))?;
            let (count, stride) = (batch as i32, stride as i64);
            // SAFETY: attribute buffers of the documented types (int32 count, int64 stride).
            unsafe {
                lt::set_matrix_layout_attribute(
                    l,
                    Layout::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&count as *const i32).cast(),
                    4,
                )
                .and_then(|_| {
                    lt::set_matrix_layout_attribute(
                        l,
                        Layout::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        (&stride as *const i64).cast(),
                        8,
                    )
                })
                .map_err(|e| blas_error("batch layout", e))?;
            }
            *slot = l;
        }
        let desc =
            lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, lt_sys::cudaDataType::CUDA_R_32F)
                .map_err(|e| blas_error("matmul descriptor", e))?;
        let set = |attr: Desc, value: *const c_void, size: usize| {
            // SAFETY: each call passes a buffer of the attribute's documented type and size.
            unsafe { lt::set_matmul_desc_attribute(desc, attr, value, size) }.map_err(|e| blas_error("descriptor", e))
        };
        // cublasOperation_t as the int32 the attributes hold: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let (op_first, op_second) = (i32::from(trans_b), i32::from(trans_a));
        set(Desc::CUBLASLT_MATMUL_DESC_TRANSA, (&op_first as *const i32).cast(), 4)?;
        set(Desc::CUBLASLT_MATMUL_DESC_TRANSB, (&op_second as *const i32).cast(), 4)?;
        // cuBLASLt's B is our A: the row sums of op(A) are the column sums of its op(B), over k.
        let epilogue = match kind {
            EpilogueKind::None => None,
            EpilogueKind::Bias => Some(lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS),
            EpilogueKind::BiasGrad => Some(lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB),
        };
        if let Some(epilogue) = epilogue {
            set(Desc::CUBLASLT_MATMUL_DESC_EPILOGUE, (&epilogue as *const lt_sys::cublasLtEpilogue_t).cast(), 4)?;
            // The bias (or its gradient) in the operands' type, as the backend allocates it.
            set(Desc::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, (&data_type as *const lt_sys::cudaDataType).cast(), 4)?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| blas_error("preference", e))?;
        let workspace_bytes = WORKSPACE_BYTES as u64;
        // Batch elements after the first are aligned only as far as the batch stride allows:
        // say so, or the heuristic may pick a kernel that needs 16-byte alignment everywhere.
        let aligned = |stride: usize| if batch > 1 { alignment_of(stride * dtype.size_in_bytes()) } else { 256 };
        let prefs = [
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, aligned(strides[0])),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, aligned(strides[1])),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, aligned(strides[2])),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, aligned(strides[2])),
        ];
        // SAFETY: a u64 byte count and u32 alignments, as the attributes document.
        let chosen = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace_bytes as *const u64).cast(),
                8,
            )
            .and_then(|_| {
                prefs.iter().try_for_each(|(attr, bytes)| {
                    lt::set_matmul_pref_attribute(pref, *attr, (bytes as *const u32).cast(), 4)
                })
            })
            .map_err(|e| blas_error("preferences", e))
            .and_then(|_| {
                lt::get_matmul_algo_heuristic(blas, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref)
                    .map_err(|e| blas_error(&format!("no algorithm for {spec:?}"), e))
            })
        };
        // SAFETY: created above, destroyed once; the plan keeps only the chosen algorithm.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        match chosen {
            Ok(heuristic) => Ok(Plan { desc, layouts, algo: heuristic.algo }),
            Err(e) => {
                // SAFETY: as above; the plan is not kept.
                unsafe { destroy(desc, layouts) };
                Err(e)
            }
        }
    }
}

/// # Safety
/// Each handle was created once and is not used afterwards.
unsafe fn destroy(desc: lt_sys::cublasLtMatmulDesc_t, layouts: [lt_sys::cublasLtMatrixLayout_t; 3]) {
    // SAFETY: the caller's contract; errors at teardown are moot.
    unsafe {
        let _ = lt::destroy_matmul_desc(desc);
        for l in layouts {
            let _ = lt::destroy_matrix_layout(l);
        }
    }
}

impl Drop for GemmPlans {
    fn drop(&mut self) {
        for (_, plan) in std::mem::take(&mut self.plans) {
            // SAFETY: each plan owns its handles.
            unsafe { destroy(plan.desc, plan.layouts) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::alignment_of;

    #[test]
    fn batch_strides_keep_the_alignment_of_their_byte_count() {
        assert_eq!(alignment_of(0), 256);
        assert_eq!(alignment_of(4096), 256);
        assert_eq!(alignment_of(77 * 64 * 2), 128);
        assert_eq!(alignment_of(77 * 2), 2);
        assert_eq!(alignment_of(3 * 4), 4);
    }
}
