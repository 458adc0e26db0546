//! Data-parallel training's arithmetic (issue 17), proven on the CPU with simulated ranks: the
//! contrastive loss spread over ranks, and the gradients summed across them, equal one process
//! over the global batch. The simulated world below is this test's collective only; real ranks
//! are processes on GPUs talking through NCCL.

mod common;

use std::sync::{Arc, Barrier, Mutex};

use common::gpu::{model_devices, on};
use common::{assert_close, randn};
use msclip::autograd;
use msclip::dist::{Collective, Negatives, sharded_infonce};
use msclip::model::{
    ClipModel, LossContext, MaskDraw, MaskedInputs, Mode, ModelConfig, Objectives, PatchMasks, preset,
};
use msclip::ops;
use msclip::train::{Precision, RunEnd, RunOptions, StepInput, StepState, TrainConfig, train};
use msclip::{DType, Device, Result, Rng, Tensor};

/// A rank's contribution to a collective: its tensor's dims and values.
type Deposit = (Vec<usize>, Vec<f64>);

/// `world` ranks as threads of one process: each collective deposits every rank's values,
/// waits for all of them, and reads them back in rank order.
struct SimulatedWorld {
    slots: Mutex<Vec<Option<Deposit>>>,
    barrier: Barrier,
}

struct SimulatedRank {
    rank: usize,
    world: Arc<SimulatedWorld>,
}

impl SimulatedWorld {
    fn ranks(world: usize) -> Vec<SimulatedRank> {
        let shared = Arc::new(SimulatedWorld { slots: Mutex::new(vec![None; world]), barrier: Barrier::new(world) });
        (0..world).map(|rank| SimulatedRank { rank, world: Arc::clone(&shared) }).collect()
    }
}

impl SimulatedRank {
    /// Every rank's (dims, values) of `x`, in rank order.
    fn exchange(&self, x: &Tensor) -> Vec<Deposit> {
        self.world.slots.lock().unwrap()[self.rank] = Some((x.dims().to_vec(), x.to_f64_vec()));
        self.world.barrier.wait();
        let all: Vec<_> = self.world.slots.lock().unwrap().iter().map(|s| s.clone().unwrap()).collect();
        // Nobody writes the next call's values before everyone has read these.
        self.world.barrier.wait();
        assert!(all.iter().all(|(dims, _)| *dims == all[0].0), "ranks disagree on a collective's shape: {all:?}");
        all
    }

    fn summed(all: &[Deposit]) -> Vec<f64> {
        let mut sum = vec![0.0; all[0].1.len()];
        for (_, values) in all {
            sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
        }
        sum
    }
}

impl Collective for SimulatedRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world.slots.lock().unwrap().len()
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let all = self.exchange(x);
        let mut dims = all[0].0.clone();
        dims[0] *= all.len();
        let values: Vec<f64> = all.into_iter().flat_map(|(_, v)| v).collect();
        on_device_of(x, Tensor::from_f64(&values, dims, x.dtype()))
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        on_device_of(x, Tensor::from_f64(&Self::summed(&self.exchange(x)), x.dims().to_vec(), x.dtype()))
    }

    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
        let all = self.exchange(x);
        let sum = Self::summed(&all);
        let mut dims = x.dims().to_vec();
        dims[0] /= all.len();
        let per_rank = sum.len() / all.len();
        on_device_of(x, Tensor::from_f64(&sum[self.rank * per_rank..][..per_rank], dims, x.dtype()))
    }
}

/// A collective's result where its input lives (the emulator's tensors go back to it).
fn on_device_of(x: &Tensor, host: Result<Tensor>) -> Result<Tensor> {
    host?.to_device(x.device())
}

/// Runs `f` on every rank of a simulated world of `world` ranks, each on its own thread (the
/// autograd tape is per thread), and returns the ranks' results in rank order.
fn on_every_rank<T: Send>(world: usize, f: impl Fn(Arc<dyn Collective>) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = SimulatedWorld::ranks(world)
            .into_iter()
            .map(|rank| scope.spawn(|| f(Arc::new(rank) as Arc<dyn Collective>)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn rows(t: &Tensor, start: usize, count: usize) -> Tensor {
    let d = t.dims()[1];
    Tensor::from_f64(&t.to_f64_vec()[start * d..(start + count) * d], vec![count, d], t.dtype()).unwrap()
}

fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

#[test]
fn the_loss_spread_over_ranks_is_the_global_batchs_loss_with_its_gradients() {
    // The CPU reference in f64, and the GPU backend's kernels (the emulator, and a GPU when
    // present) in f32 against the CPU's whole batch.
    let runs = [(Device::Cpu, DType::F64, 1e-12)]
        .into_iter()
        .chain(model_devices().into_iter().map(|d| (d, DType::F32, 2e-5)));
    for (device, dtype, tol) in runs {
        // Ragged sizes: 5 pairs per rank, 7-dim features, a logit scale under and over the clamp.
        for (world, max_scale, scale) in
            [(1, Some(100.0), 2.6), (2, None, 2.6), (3, Some(100.0), 1.3), (3, Some(3.0), 1.3)]
        {
            let (n_local, d) = (5, 7);
            let mut rng = Rng::new(17 + world as u64);
            let (img, txt) = (randn(&mut rng, &[world * n_local, d]), randn(&mut rng, &[world * n_local, d]));
            let logit_scale = Tensor::full([1], scale, DType::F64);

            let (gi, gt, gs) = (leaf(&img), leaf(&txt), leaf(&logit_scale));
            let whole = ops::infonce(&gi, &gt, &gs, max_scale).unwrap();
            let grads = autograd::backward(&whole).unwrap();
            let want = |t: &Tensor| grads.get(t).unwrap().to_f64_vec();

            let ranks = on_every_rank(world, |comm| {
                let r = comm.rank();
                let local = |t: &Tensor| leaf(&on(&rows(t, r * n_local, n_local), device, dtype));
                let (li, lt, ls) = (local(&img), local(&txt), leaf(&on(&logit_scale, device, dtype)));
                let share = sharded_infonce(&li, &lt, &ls, max_scale, comm).unwrap();
                let g = autograd::backward(&share).unwrap();
                let grad = |t: &Tensor| g.get(t).unwrap().to_f64_vec();
                (share.item().unwrap(), grad(&li), grad(&lt), grad(&ls)[0])
            });
            let what = format!("{device} {dtype}, {world} ranks, max_scale {max_scale:?}");
            let total: f64 = ranks.iter().map(|r| r.0).sum();
            assert_close(&format!("{what}: loss"), &[total], &[whole.item().unwrap()], tol, tol);
            let d_img: Vec<f64> = ranks.iter().flat_map(|r| r.1.clone()).collect();
            let d_txt: Vec<f64> = ranks.iter().flat_map(|r| r.2.clone()).collect();
            assert_close(&format!("{what}: d img"), &d_img, &want(&gi), tol, tol);
            assert_close(&format!("{what}: d txt"), &d_txt, &want(&gt), tol, tol);
            let d_scale: f64 = ranks.iter().map(|r| r.3).sum();
            assert_close(&format!("{what}: d logit_scale"), &[d_scale], &want(&gs), tol, tol);
        }
    }
}

#[test]
fn a_model_trained_on_three_ranks_gets_the_global_batchs_gradients() {
    // tiny-clip has no batch norm, whose statistics would be per rank (as in PyTorch's DDP
    // without SyncBatchNorm).
    let model = ClipModel::new(preset("tiny-clip").unwrap()).unwrap();
    let (world, n_local) = (3, 2);
    let n = world * n_local;
    let (params, _) = model.init_params(&mut Rng::new(3), DType::F64).unwrap();
    let mut rng = Rng::new(4);
    let size = model.config.vision.image_size;
    let images = randn(&mut rng, &[n, 3, size, size]);
    let context = model.config.text.context;
    let ends = [4, 9, 6, 11, 3, 7];
    let tokens = common::captions_ending_at(&mut rng, &ends, context, model.config.text.vocab);

    let (_, mut buffers) = model.init_params(&mut Rng::new(3), DType::F64).unwrap();
    let whole = model.contrastive_loss(&params, &mut buffers, &images, &tokens, Some(100.0)).unwrap();
    let grads = autograd::backward(&whole).unwrap();

    let images_of = |r: usize| {
        let per = 3 * size * size;
        Tensor::from_f64(
            &images.to_f64_vec()[r * n_local * per..][..n_local * per],
            vec![n_local, 3, size, size],
            DType::F64,
        )
        .unwrap()
    };
    let ranks = on_every_rank(world, |comm| {
        let r = comm.rank();
        let (params, mut buffers) = model.init_params(&mut Rng::new(3), DType::F64).unwrap();
        let img = model.encode_image(&params, &mut buffers, &images_of(r), Mode::Train).unwrap();
        let txt = model.encode_text(&params, &tokens[r * n_local * context..][..n_local * context]).unwrap();
        let share =
            sharded_infonce(&img, &txt, params.get(model.logit_scale()), Some(100.0), Arc::clone(&comm)).unwrap();
        let g = autograd::backward(&share).unwrap();
        // The step's gradient all-reduce: each parameter's parts summed across ranks.
        let summed: Vec<(String, Vec<f64>)> = params
            .ids()
            .map(|id| {
                let grad = g
                    .get(params.get(id))
                    .cloned()
                    .unwrap_or_else(|| Tensor::zeros(params.get(id).dims().to_vec(), DType::F64));
                (params.name(id).to_string(), comm.all_reduce_sum(&grad).unwrap().to_f64_vec())
            })
            .collect();
        (share.item().unwrap(), summed)
    });
    let total: f64 = ranks.iter().map(|r| r.0).sum();
    assert_close("loss", &[total], &[whole.item().unwrap()], 1e-13, 1e-12);
    for (name, got) in &ranks[0].1 {
        let want = grads.get(params.get(params.find(name).unwrap())).unwrap().to_f64_vec();
        assert_close(&format!("gradient of {name}"), got, &want, 1e-13, 1e-9);
        for other in &ranks[1..] {
            let theirs = &other.1.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(theirs, got, "every rank holds the same summed gradient of {name}");
        }
    }
}

/// `steps` training steps of `config` on a global batch of `n` pairs spread over `world`
/// ranks (1: one process); returns each rank's losses and final parameters.
fn train_on_ranks(config: &TrainConfig, world: usize, n: usize, steps: usize) -> Vec<(Vec<f64>, Vec<Vec<f64>>)> {
    let model = ClipModel::new(config.model_config().unwrap()).unwrap();
    let size = model.config.vision.image_size;
    let context = model.config.text.context;
    let mut rng = Rng::new(9);
    let images: Vec<Tensor> = (0..steps).map(|_| rng.normal_tensor(vec![n, 3, size, size], 1.0, DType::F32)).collect();
    let ends: Vec<usize> = (0..n).map(|i| 3 + (i * 5) % (context - 3)).collect();
    let tokens = common::captions_ending_at(&mut rng, &ends, context, model.config.text.vocab);
    let n_local = n / world;
    let per_image = 3 * size * size;
    on_every_rank(world, |comm| {
        let r = comm.rank();
        let mut state = StepState::init(&model, config, &mut Rng::new(config.seed)).unwrap();
        if world > 1 {
            state = state.across_ranks(comm);
        }
        let losses = (0..steps)
            .map(|k| {
                let local = &images[k].to_f64_vec()[r * n_local * per_image..][..n_local * per_image];
                let images = Tensor::from_f64(local, vec![n_local, 3, size, size], DType::F32).unwrap();
                let tokens = &tokens[r * n_local * context..][..n_local * context];
                let input = StepInput { images: &images, tokens, lr: 1e-3, masks: None };
                state.step(&model, config, input).unwrap().loss.item().unwrap()
            })
            .collect();
        (losses, state.params.ids().map(|id| state.params.get(id).to_f64_vec()).collect())
    })
}

#[test]
fn steps_on_two_ranks_train_as_one_process_on_the_global_batch() {
    let (steps, n) = (3, 8);
    let clip = TrainConfig::for_steps("tiny-clip", n, Device::Cpu, Precision::Fp32, steps as u64).unwrap();
    // A single tower with OneR's objectives and its mixture targets from a momentum copy.
    let mut oner = TrainConfig::for_steps("tiny-oner", n, Device::Cpu, Precision::Fp32, steps as u64).unwrap();
    oner.objectives = Objectives::parse("itc,xmc,cic=0.5").unwrap();
    oner.momentum_targets = Some(0.9);
    for config in [clip, oner] {
        same_steps_on_two_ranks(&config, n, steps);
    }
}

fn same_steps_on_two_ranks(config: &TrainConfig, n: usize, steps: usize) {
    let alone = &train_on_ranks(config, 1, n, steps)[0];
    let ranks = train_on_ranks(config, 2, n, steps);
    let model = ClipModel::new(config.model_config().unwrap()).unwrap();
    let (start, _) = model.init_params(&mut Rng::new(config.seed), DType::F32).unwrap();
    for (r, (losses, params)) in ranks.iter().enumerate() {
        // Each step's loss is the global batch's, read on every rank.
        assert_close(&format!("rank {r}: losses"), losses, &alone.0, 1e-6, 1e-5);
        for (i, id) in start.ids().enumerate() {
            // The update of every parameter, as the single process made it (f32 sums in
            // another order: relative to the update's size).
            let before = start.get(id).to_f64_vec();
            let moved = |p: &[f64]| p.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>();
            let err = common::relative_error(&moved(&params[i]), &moved(&alone.1[i]));
            assert!(err < 1e-3, "rank {r}: the update of {} is off by {err:.2e}", start.name(id));
        }
        assert_eq!(params, &ranks[0].1, "the ranks' parameters stay identical");
    }
}

/// Rows `start .. start + count` of a batch of `[batch, ...]` values flattened row-major.
fn batch_rows<T: Clone>(values: &[T], batch: usize, start: usize, count: usize) -> Vec<T> {
    let per_row = values.len() / batch;
    values[start * per_row..(start + count) * per_row].to_vec()
}

#[test]
fn a_single_towers_objectives_spread_over_ranks_are_the_global_batchs_with_their_gradients() {
    // OneR's contrasts against the pairs' mixtures, with the mixture a target and with
    // gradients through it (whose columns' parts are reduce-scattered), beside CLIP's contrast
    // and MIM, whose ranks mask as many patches per image, so the mean of their means is the
    // global batch's mean. tiny-oner has no batch norm (its statistics would be per rank).
    let model = ClipModel::new(ModelConfig { mim_head: true, ..preset("tiny-oner").unwrap() }).unwrap();
    let (world, n_local) = (3, 2);
    let n = world * n_local;
    let mut rng = Rng::new(41);
    let size = model.config.vision.image_size;
    let images = randn(&mut rng, &[n, 3, size, size]);
    let context = model.config.text.context;
    let tokens = common::captions_ending_at(&mut rng, &[5, 9, 3, 11, 7, 4], context, model.config.text.vocab);
    let geometry = model.mask_geometry();
    let per_image = 3;
    let patches: Vec<u32> =
        (0..n * per_image).map(|i| ((i * 7 + i / per_image) % geometry.patches_per_image) as u32).collect();
    let masks_of = |start: usize, count: usize| MaskDraw {
        captions: None,
        patches: Some(PatchMasks { patches: batch_rows(&patches, n, start, count), per_image }),
    };
    let images_of = |start: usize, count: usize| {
        Tensor::from_f64(&batch_rows(&images.to_f64_vec(), n, start, count), vec![count, 3, size, size], DType::F64)
            .unwrap()
    };
    // The loss (and each objective's value) of pairs `start .. start + count` and its
    // gradients, every parameter's (zeros where the loss does not reach it).
    let loss_of = |objectives: &Objectives, start: usize, count: usize, negatives: Negatives| {
        let (params, mut buffers) = model.init_params(&mut Rng::new(5), DType::F64).unwrap();
        let tokens = batch_rows(&tokens, n, start, count);
        let captions = model.pack_captions(&tokens, None).unwrap();
        let masked = MaskedInputs::new(&tokens, &masks_of(start, count), geometry, None).unwrap();
        let context = LossContext { masked: Some(&masked), negatives, ..LossContext::default() };
        let images = images_of(start, count);
        let out = model.training_loss_terms(&params, &mut buffers, &images, &captions, objectives, context).unwrap();
        let grads = autograd::backward(&out.total).unwrap();
        let grads: Vec<Vec<f64>> = params
            .ids()
            .map(|id| grads.get(params.get(id)).map_or_else(|| vec![0.0; params.get(id).numel()], |g| g.to_f64_vec()))
            .collect();
        let terms: Vec<f64> = out.terms.iter().map(|(_, t)| t.item().unwrap()).collect();
        (out.total.item().unwrap(), terms, grads)
    };
    for spec in ["itc,xmc=0.5,cmc=0.3,cic=0.2,mim=0.7", "xmc,cmc=0.4,cic=0.6,through-mixture"] {
        let objectives = Objectives::parse(spec).unwrap();
        let (whole, whole_terms, whole_grads) = loss_of(&objectives, 0, n, Negatives::Local);
        let ranks = on_every_rank(world, |comm| {
            let r = comm.rank();
            let (share, terms, grads) =
                loss_of(&objectives, r * n_local, n_local, Negatives::AcrossRanks(comm.clone()));
            let summed = |values: &[f64]| {
                let t = Tensor::from_f64(values, vec![values.len()], DType::F64).unwrap();
                comm.all_reduce_sum(&t).unwrap().to_f64_vec()
            };
            (share, summed(&terms), grads.iter().map(|g| summed(g)).collect::<Vec<_>>())
        });
        let total: f64 = ranks.iter().map(|r| r.0).sum();
        assert_close(&format!("{spec}: loss"), &[total], &[whole], 1e-13, 1e-12);
        assert_close(&format!("{spec}: each objective"), &ranks[0].1, &whole_terms, 1e-13, 1e-12);
        let (params, _) = model.init_params(&mut Rng::new(5), DType::F64).unwrap();
        for (i, id) in params.ids().enumerate() {
            let name = format!("{spec}: gradient of {}", params.name(id));
            assert_close(&name, &ranks[0].2[i], &whole_grads[i], 1e-13, 1e-9);
        }
    }
}

#[test]
fn a_world_of_one_runs_through_nccl_on_a_gpu() {
    if !model_devices().contains(&Device::Cuda) {
        eprintln!("NCCL skipped: no usable GPU");
        return;
    }
    let id = match msclip::dist::nccl_unique_id() {
        Ok(id) => id,
        Err(e) if std::env::var_os("MSCLIP_REQUIRE_GPU").is_none() => return eprintln!("NCCL skipped: {e}"),
        Err(e) => panic!("MSCLIP_REQUIRE_GPU is set: {e}"),
    };
    let place = msclip::dist::WorldPlace { rank: 0, world_size: 1, local_rank: 0, master: "127.0.0.1:29500".into() };
    let ranks: Arc<dyn Collective> = Arc::new(msclip::dist::NcclRanks::join(&place, &id).unwrap());
    let mut rng = Rng::new(5);
    let x = randn(&mut rng, &[6, 5]);
    let on_gpu = on(&x, Device::Cuda, DType::F32);
    for (what, got) in [
        ("all_gather", ranks.all_gather(&on_gpu).unwrap()),
        ("all_reduce_sum", ranks.all_reduce_sum(&on_gpu).unwrap()),
        ("reduce_scatter_sum", ranks.reduce_scatter_sum(&on_gpu).unwrap()),
    ] {
        assert_eq!(got.dims(), x.dims(), "{what}");
        assert_eq!(got.to_f64_vec(), on_gpu.to_f64_vec(), "{what}: a world of one hands back its input");
    }
    // A sum on NCCL's side stream, with work queued on the device's stream meanwhile.
    let pending = ranks.start_all_reduce_sum(on_gpu.scale(3.0).unwrap()).unwrap();
    let beside = on_gpu.exp().unwrap();
    let got = pending.finish().unwrap();
    assert_eq!(got.to_f64_vec(), on_gpu.scale(3.0).unwrap().to_f64_vec(), "the side stream's sum");
    assert_eq!(beside.to_f64_vec(), on_gpu.exp().unwrap().to_f64_vec());
    // A training step whose gradient buckets are summed on the side stream during the backward
    // trains as the step of one process.
    let config = TrainConfig::for_steps("tiny-clip", 4, Device::Cuda, Precision::Fp32, 2).unwrap();
    let model = ClipModel::new(config.model_config().unwrap()).unwrap();
    let size = model.config.vision.image_size;
    let images = on(&randn(&mut rng, &[4, 3, size, size]), Device::Cuda, DType::F32);
    let context = model.config.text.context;
    let tokens = common::captions_ending_at(&mut rng, &[4, 7, 3, 9], context, model.config.text.vocab);
    let step_losses = |ranks: Option<Arc<dyn Collective>>| {
        let mut state = StepState::init(&model, &config, &mut Rng::new(config.seed)).unwrap();
        state.to_device(Device::Cuda).unwrap();
        if let Some(ranks) = ranks {
            state = state.across_ranks(ranks);
        }
        (0..2)
            .map(|_| {
                let input = StepInput { images: &images, tokens: &tokens, lr: 1e-3, masks: None };
                state.step(&model, &config, input).unwrap().loss.item().unwrap()
            })
            .collect::<Vec<f64>>()
    };
    assert_close("steps through NCCL", &step_losses(Some(Arc::clone(&ranks))), &step_losses(None), 1e-6, 1e-5);
    // The loss through NCCL is the whole batch's.
    let (img, txt) = (randn(&mut rng, &[6, 8]), randn(&mut rng, &[6, 8]));
    let scale = Tensor::full([1], 2.0, DType::F64);
    let want = ops::infonce(&img, &txt, &scale, Some(100.0)).unwrap().item().unwrap();
    let [img, txt, scale] = [&img, &txt, &scale].map(|t| on(t, Device::Cuda, DType::F32));
    let got = sharded_infonce(&img, &txt, &scale, Some(100.0), ranks).unwrap().item().unwrap();
    assert_close("loss through NCCL", &[got], &[want], 1e-5, 1e-5);
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-test-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A few-second run of `tiny-clip` (no batch norm, so ranks and one process compute the same
/// thing) on a global batch of 8, every second step logged.
fn small_run(dir: &std::path::Path) -> TrainConfig {
    let mut c = TrainConfig::for_preset("tiny-clip").unwrap();
    (c.name, c.output_dir, c.steps, c.batch_size, c.warmup_steps) = ("run".into(), dir.to_path_buf(), 6, 8, 2);
    (c.log_every, c.save_every, c.eval_samples, c.quick_eval_every) = (2, 1000, 0, 0);
    c
}

fn logged_losses(run: &std::path::Path) -> Vec<f64> {
    msclip::train::read_jsonl(&run.join("train_loss.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_run_on_two_ranks_trains_as_one_process_and_only_rank_0_writes() {
    let (one, two) = (scratch("one"), scratch("two"));
    let quiet = RunOptions { quiet: true, ..Default::default() };
    let alone = train(&small_run(&one), &quiet).unwrap();
    let config = small_run(&two);
    let ranks = on_every_rank(2, |comm| {
        train(&config, &RunOptions { quiet: true, ranks: Some(comm), ..Default::default() }).unwrap()
    });
    assert_close("losses", &logged_losses(&two.join("run")), &logged_losses(&one.join("run")), 1e-6, 1e-5);
    for (r, summary) in ranks.iter().enumerate() {
        assert_eq!((summary.steps_done, summary.end), (6, RunEnd::Finished), "rank {r}");
        for id in alone.params.ids() {
            let (got, want) = (summary.params.get(id).to_f64_vec(), alone.params.get(id).to_f64_vec());
            let err = common::relative_error(&got, &want);
            // f32 sums in another order, through 6 AdamW steps.
            assert!(err < 2e-4, "rank {r}: {} off by {err:.1e}", alone.params.name(id));
        }
    }
    // One log line per step and one final checkpoint: rank 0's; rank 1 wrote nothing.
    assert_eq!(logged_losses(&two.join("run")).len(), 6);
    let checkpoints: Vec<_> =
        std::fs::read_dir(two.join("run/checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(checkpoints.iter().any(|n| n == "latest.safetensors"), "{checkpoints:?}");
    let _ = (std::fs::remove_dir_all(one), std::fs::remove_dir_all(two));
}

#[test]
fn an_interruption_on_one_rank_stops_every_rank_at_the_next_logged_step() {
    let dir = scratch("stop");
    let config = small_run(&dir);
    let ends = on_every_rank(2, |comm| {
        // Only rank 1 is told to stop, before its first step.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(comm.rank() == 1));
        let options = RunOptions { quiet: true, ranks: Some(comm), stop: Some(stop), ..Default::default() };
        let summary = train(&config, &options).unwrap();
        (summary.steps_done, summary.end)
    });
    assert_eq!(ends, vec![(2, RunEnd::Interrupted); 2]);
    assert_eq!(logged_losses(&dir.join("run")).len(), 2, "rank 0 saved and logged up to step 2");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_global_batch_that_does_not_split_is_refused() {
    let dir = scratch("split");
    let mut config = small_run(&dir);
    config.batch_size = 9;
    let errors = on_every_rank(2, |comm| {
        train(&config, &RunOptions { quiet: true, ranks: Some(comm), ..Default::default() }).unwrap_err().to_string()
    });
    for err in errors {
        assert!(err.contains("--batch-size 9 is the global batch"), "{err}");
    }
}

#[test]
fn weighted_contrast_spread_over_ranks_is_the_global_batchs() {
    use msclip::backend::ContrastWeights;
    // XMC's direction (rows only) with the columns a detached target, and an asymmetric mix
    // whose columns get a gradient.
    for (weights, columns_learn) in
        [(ContrastWeights::ROWS, false), (ContrastWeights { rows: 0.7, columns: 0.3 }, true)]
    {
        let (world, n_local, d) = (3, 4, 6);
        let mut rng = Rng::new(31);
        let (row_features, column_features) =
            (randn(&mut rng, &[world * n_local, d]), randn(&mut rng, &[world * n_local, d]));
        let scale = Tensor::full([1], 1.9, DType::F64);
        let column_leaf = |t: &Tensor| if columns_learn { leaf(t) } else { t.detach() };
        let (gr, gc, gs) = (leaf(&row_features), column_leaf(&column_features), leaf(&scale));
        let whole = ops::contrast(&gr, &gc, &gs, Some(100.0), weights).unwrap();
        let grads = autograd::backward(&whole).unwrap();
        let ranks = on_every_rank(world, |comm| {
            let r = comm.rank();
            let (lr, lc, ls) = (
                leaf(&rows(&row_features, r * n_local, n_local)),
                column_leaf(&rows(&column_features, r * n_local, n_local)),
                leaf(&scale),
            );
            let share = msclip::dist::sharded_contrast(&lr, &lc, &ls, Some(100.0), weights, comm).unwrap();
            let g = autograd::backward(&share).unwrap();
            (
                share.item().unwrap(),
                g.get(&lr).unwrap().to_f64_vec(),
                g.get(&lc).map(|t| t.to_f64_vec()),
                g.get(&ls).unwrap().to_f64_vec()[0],
            )
        });
        let what = format!("{weights:?}");
        assert_close(
            &format!("{what}: loss"),
            &[ranks.iter().map(|r| r.0).sum()],
            &[whole.item().unwrap()],
            1e-12,
            1e-12,
        );
        let d_rows: Vec<f64> = ranks.iter().flat_map(|r| r.1.clone()).collect();
        assert_close(&format!("{what}: d rows"), &d_rows, &grads.get(&gr).unwrap().to_f64_vec(), 1e-12, 1e-12);
        let d_scale: f64 = ranks.iter().map(|r| r.3).sum();
        assert_close(&format!("{what}: d scale"), &[d_scale], &grads.get(&gs).unwrap().to_f64_vec(), 1e-12, 1e-12);
        if columns_learn {
            let d_columns: Vec<f64> = ranks.iter().flat_map(|r| r.2.clone().unwrap()).collect();
            assert_close(
                &format!("{what}: d columns"),
                &d_columns,
                &grads.get(&gc).unwrap().to_f64_vec(),
                1e-12,
                1e-12,
            );
        } else {
            assert!(ranks.iter().all(|r| r.2.is_none()), "a detached target gets no gradient");
        }
    }
}

#[test]
fn a_single_tower_run_with_masked_objectives_trains_on_two_ranks() {
    // Each rank masks its own captions and patches; the logged loss and objective values are
    // the global batch's, and the total is their weighted sum.
    let dir = scratch("oner");
    let mut config = small_run(&dir);
    config.preset = "tiny-oner".into();
    config.objectives = Objectives::parse("itc,xmc=0.5,mlm=0.3,mim=0.2").unwrap();
    config.steps = 4;
    let ends = on_every_rank(2, |comm| {
        let summary = train(&config, &RunOptions { quiet: true, ranks: Some(comm), ..Default::default() }).unwrap();
        (summary.steps_done, summary.end)
    });
    assert_eq!(ends, vec![(4, RunEnd::Finished); 2]);
    let records = msclip::train::read_jsonl(&dir.join("run/train_loss.jsonl")).unwrap();
    assert_eq!(records.len(), 4);
    for r in &records {
        let term = |name: &str| r[format!("loss_{name}")].as_f64().unwrap_or_else(|| panic!("no {name} in {r}"));
        let weighted = term("itc") + 0.5 * term("xmc") + 0.3 * term("mlm") + 0.2 * term("mim");
        assert_close("the total of the logged terms", &[r["loss"].as_f64().unwrap()], &[weighted], 1e-5, 1e-5);
    }
    let _ = std::fs::remove_dir_all(dir);
}
