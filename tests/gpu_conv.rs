//! Convolution (kernels/conv.cu: im2col + GEMM, col2im, depthwise kernels; pointwise convs as
//! GEMMs over NCHW) against the CPU reference, in f32 and bf16 (BatchNorm: gpu_batchnorm.rs),
//! on ragged shapes: odd spatial sizes (7x5, 13x13, 1x1), 1 to 64 channels, strides 1 to
//! 17, padding 0 to 2, kernels up to 17x17, dense, grouped, depthwise and pointwise
//! convolutions, dense ones with their patches channel-major and sample-major.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as, rtol_of};
use msclip::backend::gpu::counters::measure;
use msclip::backend::gpu::{GemmSpec, GemmType};
use msclip::backend::{self, Backend, Conv2dGeometry};
use msclip::{DType, Device, Rng, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

fn cpu() -> &'static dyn Backend {
    backend::get(Device::Cpu)
}

/// `got` (any device and dtype) against the f32 CPU reference, with an absolute tolerance
/// scaled to the largest reference value: sums of products whose terms are rounded (bf16
/// outputs of the GEMM before col2im, for one) carry errors relative to their terms, not to a
/// result that cancels.
fn check(what: &str, got: &Tensor, want: &Tensor, dtype: DType) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let want = want.to_f64_vec();
    let rtol = rtol_of(dtype);
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    assert_close(what, &got.to_f64_vec(), &want, rtol * scale, rtol);
}

/// One convolution case: input [n, c, h, w], `co` output channels, square kernel `k`.
#[derive(Debug, Clone, Copy)]
struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    geo: Conv2dGeometry,
}

const fn case(
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    co: usize,
    k: usize,
    (stride, padding, groups): (usize, usize, usize),
) -> ConvCase {
    ConvCase { n, c, h, w, co, k, geo: Conv2dGeometry { stride, padding, groups } }
}

/// Pointwise (1x1, stride 1, unpadded, ungrouped) convs whose weight gradient sums per-sample
/// products (src/backend/gpu/conv.rs, sums_per_sample_products): 2 C_out C_in at most
/// HW (C_in + C_out).
const POINTWISE_SUMMED: [ConvCase; 2] = [case(3, 5, (7, 7), 3, 1, (1, 0, 1)), case(1, 4, (5, 3), 6, 1, (1, 0, 1))];

/// Pointwise convs whose weight gradient swaps dy and x channel-major: more channels than pixels.
const POINTWISE_SWAPPED: [ConvCase; 3] = [
    case(3, 24, (5, 3), 20, 1, (1, 0, 1)),
    case(1, 17, (1, 3), 9, 1, (1, 0, 1)),
    case(3, 64, (7, 7), 48, 1, (1, 0, 1)),
];

/// Dense convs on output planes of 512 pixels or more (src/backend/gpu/conv.rs,
/// PER_SAMPLE_MIN_PLANE), whose GEMMs run per sample on sample-major patches forward and, where
/// the weight gradient's per-sample products are at most half of dy's swap (2 C_out patch at
/// most C_out Ho Wo), backward: a 3x3 stride-2 conv on an odd plane (23x23 = 529 outputs), a 1x1
/// stride-2 shortcut, and a 3x3 conv on a 24x22 plane with 2 samples.
const SAMPLE_MAJOR: [ConvCase; 3] = [
    case(2, 3, (46, 45), 5, 3, (2, 1, 1)),
    case(1, 4, (47, 48), 6, 1, (2, 0, 1)),
    case(2, 2, (24, 22), 3, 3, (1, 1, 1)),
];

/// A dense conv on a plane of 512 pixels or more whose per-sample products would outweigh
/// dy's swap (patch 9 * 32 = 288, 2 * 288 > 529): per sample forward, channel-major backward.
const SAMPLE_MAJOR_FORWARD_ONLY: ConvCase = case(1, 32, (23, 23), 4, 3, (1, 1, 1));

const CONV_CASES: [ConvCase; 32] = [
    // Dense.
    case(2, 3, (7, 5), 5, 3, (1, 1, 1)),
    case(1, 1, (13, 13), 3, 3, (2, 0, 1)),
    // Stride above the kernel: some input pixels are read by no tap (their dx is zero).
    case(2, 2, (11, 9), 3, 2, (3, 1, 1)),
    // Patch embedding style: kernel = stride, 13 not a multiple of it.
    case(2, 3, (13, 13), 5, 2, (2, 0, 1)),
    // Grouped: 2 groups of 2 input and 3 output channels; a channel multiplier (groups = C_in,
    // 2 outputs per group) also takes the GEMM path.
    case(2, 4, (7, 5), 6, 3, (2, 1, 2)),
    case(2, 3, (7, 5), 6, 3, (1, 1, 3)),
    // Depthwise.
    case(3, 5, (13, 13), 5, 3, (1, 1, 5)),
    case(2, 5, (7, 5), 5, 3, (2, 0, 5)),
    case(1, 3, (7, 5), 3, 5, (2, 1, 3)),
    // The parallel branch's downsampling: depthwise with kernel = stride, 13 not a multiple of 4.
    case(2, 3, (13, 13), 3, 4, (4, 0, 3)),
    case(2, 1, (7, 5), 1, 3, (1, 1, 1)),
    // col2im's stride x stride tiles (strides 1 and 2): even widths (whole-row stores) and odd,
    // odd heights (half tiles), a 1x1 stride-2 shortcut (pixels read by no tap), padding 2 with
    // a 3x3 kernel (taps reading only padding).
    case(2, 2, (10, 12), 3, 3, (2, 1, 1)),
    case(1, 3, (6, 9), 2, 3, (1, 1, 1)),
    case(2, 2, (9, 7), 3, 3, (2, 1, 1)),
    case(2, 3, (9, 8), 4, 1, (2, 0, 1)),
    case(1, 2, (5, 6), 3, 3, (1, 2, 1)),
    // The depthwise weight gradient's edges (src/backend/gpu/conv.rs, SampleChunks): a kernel
    // of 17x17 = 289 taps, more than a block's 256 threads (two passes), as a patchify and with
    // stride 3 and padding 2; 12x12 = 144 taps (one tap a thread, the rest idle); 5 samples of
    // 45x40 in chunks of 2 (the last chunk one sample); one sample; one channel; stride above
    // the kernel with padding.
    case(2, 2, (35, 36), 2, 17, (17, 0, 2)),
    case(1, 1, (20, 19), 1, 17, (3, 2, 1)),
    case(2, 3, (26, 25), 3, 12, (6, 1, 3)),
    case(5, 2, (45, 40), 2, 3, (1, 1, 2)),
    case(1, 4, (9, 11), 4, 3, (2, 1, 4)),
    case(3, 1, (64, 48), 1, 16, (16, 0, 1)),
    case(2, 3, (11, 10), 3, 2, (3, 1, 3)),
    // Pointwise: GEMMs over NCHW, both routes of the weight gradient, batches of 1 and 3.
    POINTWISE_SUMMED[0],
    POINTWISE_SUMMED[1],
    POINTWISE_SWAPPED[0],
    POINTWISE_SWAPPED[1],
    POINTWISE_SWAPPED[2],
    // Dense with the patches sample-major.
    SAMPLE_MAJOR[0],
    SAMPLE_MAJOR[1],
    SAMPLE_MAJOR[2],
    SAMPLE_MAJOR_FORWARD_ONLY,
];

/// x, w and dy of a case, N(0, 1), N(0, 0.25) and N(0, 1) values that `dtype` holds exactly.
fn operands(rng: &mut Rng, cc: &ConvCase, dtype: DType) -> [Tensor; 3] {
    let x = randn_as(rng, &[cc.n, cc.c, cc.h, cc.w], 1.0, dtype);
    let w = randn_as(rng, &[cc.co, cc.c / cc.geo.groups, cc.k, cc.k], 0.5, dtype);
    let y_dims = cpu().conv2d(&x, &w, cc.geo).unwrap().dims().to_vec();
    let dy = randn_as(rng, &y_dims, 1.0, dtype);
    [x, w, dy]
}

#[test]
fn conv2d_forward_and_backward_match_the_cpu() {
    for device in gpu_devices() {
        for (i, cc) in CONV_CASES.iter().enumerate() {
            for dtype in DTYPES {
                let mut rng = Rng::new(100 + i as u64);
                let [x, w, dy] = operands(&mut rng, cc, dtype);
                let want_y = cpu().conv2d(&x, &w, cc.geo).unwrap();
                let (want_dx, want_dw) = cpu().conv2d_backward(&x, &w, &dy, cc.geo, true).unwrap();
                let want_dx = want_dx.expect("the CPU returns dx when asked");

                let gpu = backend::get(device);
                let (gx, gw, gdy) = (on(&x, device, dtype), on(&w, device, dtype), on(&dy, device, dtype));
                let what = |name: &str| format!("{device} {dtype} {cc:?} {name}");
                let y = gpu.conv2d(&gx, &gw, cc.geo).unwrap_or_else(|e| panic!("{}: {e}", what("forward")));
                check(&what("y"), &y, &want_y, dtype);
                let (dx, dw) = gpu.conv2d_backward(&gx, &gw, &gdy, cc.geo, true).unwrap();
                check(&what("dx"), &dx.expect("dx was asked for"), &want_dx, dtype);
                check(&what("dw"), &dw, &want_dw, dtype);
                // Without dx, and a second time: the weight gradient is bit-for-bit the same.
                let (none, again) = gpu.conv2d_backward(&gx, &gw, &gdy, cc.geo, false).unwrap();
                assert!(none.is_none(), "{}", what("dx not asked for"));
                assert_eq!(again.to_f64_vec(), dw.to_f64_vec(), "{}", what("dw is deterministic"));
            }
        }
    }
}

/// Pointwise convs run over NCHW as GEMMs batched over the samples with the weight shared: no
/// im2col, col2im or layout swap, forward or for dx. Their weight gradient is one more GEMM
/// batched over the samples and a fixed-order sum of its products, or, with more channels than
/// pixels, dy and x swapped channel-major and one GEMM over the batch.
#[test]
fn pointwise_convs_run_as_per_sample_gemms() {
    for device in gpu_devices() {
        let gpu = backend::get(device);
        let routes = POINTWISE_SUMMED.iter().map(|c| (c, true)).chain(POINTWISE_SWAPPED.iter().map(|c| (c, false)));
        for (cc, summed) in routes {
            let [x, w, dy] = operands(&mut Rng::new(300), cc, DType::F32).map(|t| on(&t, device, DType::F32));
            let what = format!("{device} {cc:?}");
            let (hw, per_sample) = (cc.h * cc.w, |mnk, trans| GemmSpec::new(GemmType::F32, cc.n, mnk, trans));
            let (_, forward) = measure(|| gpu.conv2d(&x, &w, cc.geo).unwrap());
            assert_eq!(forward.launches(), 0, "{what}: forward launches {:?}", forward.launches_by_kernel);
            let y_gemm = per_sample((cc.co, hw, cc.c), (false, false)).with_shared_a();
            assert_eq!(forward.gemms_by_spec, [(y_gemm, 1)].into(), "{what}: forward");

            let (_, backward) = measure(|| gpu.conv2d_backward(&x, &w, &dy, cc.geo, true).unwrap());
            let dx_gemm = per_sample((cc.c, hw, cc.co), (true, false)).with_shared_a();
            let (dw_gemm, kernels) = if summed {
                (per_sample((cc.co, cc.c, hw), (false, true)), vec!["sum_middle_f32"])
            } else {
                (GemmSpec::new(GemmType::F32, 1, (cc.co, cc.c, cc.n * hw), (false, true)), vec!["swap_outer_f32"])
            };
            assert_eq!(backward.gemms_by_spec, [(dw_gemm, 1), (dx_gemm, 1)].into(), "{what}: backward");
            let launched: Vec<&str> = backward.launches_by_kernel.keys().map(String::as_str).collect();
            assert_eq!(launched, kernels, "{what}: backward launches {:?}", backward.launches_by_kernel);
        }
    }
}

/// Dense convs on planes of 512 pixels or more lay their patches out sample-major, so the
/// forward's GEMM per sample writes NCHW (no swap) and the backward's read dy as it lies: dW as
/// per-sample products summed in a fixed order, dx through per-sample patch gradients and
/// col2im. Where the products would outweigh swapping dy, the backward goes channel-major.
#[test]
fn dense_convs_on_large_planes_run_per_sample_gemms() {
    for device in gpu_devices() {
        let gpu = backend::get(device);
        let routes = SAMPLE_MAJOR.iter().map(|c| (c, true)).chain([(&SAMPLE_MAJOR_FORWARD_ONLY, false)]);
        for (cc, per_sample_backward) in routes {
            let [x, w, dy] = operands(&mut Rng::new(400), cc, DType::F32).map(|t| on(&t, device, DType::F32));
            let what = format!("{device} {cc:?}");
            let plane = dy.dims()[2] * dy.dims()[3];
            let patch = cc.c * cc.k * cc.k;
            let per_sample = |mnk, trans| GemmSpec::new(GemmType::F32, cc.n, mnk, trans);
            let (_, forward) = measure(|| gpu.conv2d(&x, &w, cc.geo).unwrap());
            let launched: Vec<&str> = forward.launches_by_kernel.keys().map(String::as_str).collect();
            assert_eq!(launched, ["im2col_f32"], "{what}: forward launches");
            let y_gemm = per_sample((cc.co, plane, patch), (false, false)).with_shared_a();
            assert_eq!(forward.gemms_by_spec, [(y_gemm, 1)].into(), "{what}: forward");

            let (_, backward) = measure(|| gpu.conv2d_backward(&x, &w, &dy, cc.geo, true).unwrap());
            let launched: Vec<&str> = backward.launches_by_kernel.keys().map(String::as_str).collect();
            let (gemms, kernels) = if per_sample_backward {
                let dw_gemm = per_sample((cc.co, patch, plane), (false, true));
                let dcol_gemm = per_sample((patch, plane, cc.co), (true, false)).with_shared_a();
                ([(dw_gemm, 1), (dcol_gemm, 1)].into(), vec!["col2im_f32", "im2col_f32", "sum_middle_f32"])
            } else {
                let columns = cc.n * plane;
                let dw_gemm = GemmSpec::new(GemmType::F32, 1, (cc.co, patch, columns), (false, true));
                let dcol_gemm = GemmSpec::new(GemmType::F32, 1, (patch, columns, cc.co), (true, false));
                ([(dw_gemm, 1), (dcol_gemm, 1)].into(), vec!["col2im_f32", "im2col_f32", "swap_outer_f32"])
            };
            assert_eq!(backward.gemms_by_spec, gemms, "{what}: backward");
            assert_eq!(launched, kernels, "{what}: backward launches {:?}", backward.launches_by_kernel);
        }
    }
}
