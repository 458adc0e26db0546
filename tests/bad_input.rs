//! Wrong shapes, dtypes and indices give errors that name the op and the shapes; nothing
//! broadcasts silently and nothing reads out of bounds.

use msclip::backend::{AttnMask, Conv2dGeometry};
use msclip::ops::{self, BatchNormMode};
use msclip::{DType, Table, Tensor};

fn z(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape.to_vec(), DType::F32)
}

/// The error message, checked to mention every fragment.
fn expect_err(result: msclip::Result<impl std::fmt::Debug>, fragments: &[&str]) {
    let msg = result.expect_err("must fail").to_string();
    for f in fragments {
        assert!(msg.contains(f), "error {msg:?} does not mention {f:?}");
    }
}

#[test]
fn shape_mismatches_name_op_and_shapes() {
    expect_err(z(&[2, 3]).matmul(&z(&[4, 5])), &["matmul", "[2, 3]", "[4, 5]"]);
    expect_err(z(&[2, 3]).add(&z(&[3])), &["add", "[2, 3]", "[3]"]);
    expect_err(z(&[2, 3]).add_broadcast(&z(&[2])), &["add_broadcast", "[2, 3]", "[2]"]);
    expect_err(z(&[2, 3]).bias_quick_gelu(&z(&[2])), &["bias_quick_gelu", "[2, 3]", "[2]"]);
    expect_err(z(&[2, 3]).linear(&z(&[4, 5]), None), &["linear", "[2, 3]", "[4, 5]"]);
    expect_err(z(&[2, 3]).linear(&z(&[4, 3]), Some(&z(&[5]))), &["linear", "bias", "[5]"]);
    expect_err(z(&[2, 3]).layer_norm(&z(&[4]), &z(&[3]), 1e-5), &["layer_norm", "[2, 3]", "[4]"]);
    expect_err(z(&[2, 3]).add_layer_norm(&z(&[3, 2]), &z(&[3]), &z(&[3]), 1e-5), &["add_layer_norm", "[3, 2]"]);
    expect_err(z(&[6]).reshape([4]), &["reshape", "[6]", "[4]"]);
    expect_err(z(&[2, 3]).permute(&[0, 0]), &["permute", "[2, 3]"]);
    expect_err(ops::concat(&[&z(&[2, 3]), &z(&[2, 4])], 0), &["concat", "[2, 3]", "[2, 4]"]);
    expect_err(ops::attention(&z(&[1, 4, 10]), 2, &AttnMask::none()), &["attention", "[1, 4, 10]"]);
    expect_err(ops::attention(&z(&[2, 4, 12]), 2, &AttnMask::key_padding(vec![4])), &["attention", "1 key lengths"]);
    expect_err(ops::infonce(&z(&[3, 4]), &z(&[2, 4]), &z(&[1]), None), &["infonce", "[3, 4]", "[2, 4]"]);
    expect_err(ops::infonce(&z(&[3, 4]), &z(&[3, 4]), &z(&[2]), None), &["infonce", "logit_scale"]);
    let geo = Conv2dGeometry { stride: 1, padding: 0, groups: 2 };
    expect_err(ops::conv2d(&z(&[1, 3, 4, 4]), &z(&[2, 1, 3, 3]), geo), &["conv2d", "[1, 3, 4, 4]", "groups"]);
    let geo = Conv2dGeometry { stride: 1, padding: 0, groups: 1 };
    expect_err(ops::conv2d(&z(&[1, 1, 2, 2]), &z(&[1, 1, 3, 3]), geo), &["conv2d", "kernel larger"]);
    expect_err(
        ops::batch_norm2d(&z(&[2, 3, 2, 2]), &z(&[4]), &z(&[4]), 1e-5, BatchNormMode::Train),
        &["batch_norm2d", "[2, 3, 2, 2]"],
    );
    expect_err(Tensor::from_vec(vec![1.0f32; 5], [2, 3]), &["5 elements", "[2, 3]"]);
}

#[test]
fn dtype_mismatches_are_errors() {
    let a = Tensor::zeros([2, 2], DType::F32);
    let b = Tensor::zeros([2, 2], DType::F64);
    expect_err(a.add(&b), &["add", "f32", "f64"]);
    expect_err(a.matmul(&b), &["matmul", "dtype"]);
    // bf16 is a storage type on the CPU: computing in it is refused, by name.
    let h = a.to_dtype(DType::BF16).unwrap();
    expect_err(h.add(&h), &["binary", "bf16"]);
    expect_err(h.cpu_slice::<f32>(), &["cpu_slice", "bf16"]);
}

#[test]
fn out_of_range_indices_are_errors() {
    let table = z(&[5, 3]);
    expect_err(table.index_rows(&[1, 5]), &["index_rows", "index 5", "0..5"]);
    expect_err(ops::cross_entropy(&z(&[2, 3]), &Table::new(vec![0, 3])), &["cross_entropy", "index 3"]);
    expect_err(z(&[2, 4]).slice(1, 3, 2), &["slice", "3..5"]);
    expect_err(z(&[2, 4]).sum_dim(2), &["sum_dim", "dimension 2"]);
    expect_err(ops::attention(&z(&[1, 4, 12]), 2, &AttnMask::key_padding(vec![5])), &["attention", "key length 5"]);
}
