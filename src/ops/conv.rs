//! 2-D convolution, NCHW, no bias (every conv in MS-CLIP is bias-free).

use super::{be, check_rank, check_same_kind};
use crate::autograd::record1;
use crate::backend::Conv2dGeometry;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `x` [n, c, h, w] convolved with `weight` [c_out, c/groups, kh, kw]. `groups == c` with
/// `c_out == c` is a depthwise convolution.
pub fn conv2d(x: &Tensor, weight: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
    const OP: &str = "conv2d";
    check_same_kind(OP, &[x, weight])?;
    check_rank(OP, "input", x, &[4])?;
    check_rank(OP, "weight", weight, &[4])?;
    let (c, h, w) = (x.dims()[1], x.dims()[2], x.dims()[3]);
    let (co, cg, kh, kw) = (weight.dims()[0], weight.dims()[1], weight.dims()[2], weight.dims()[3]);
    let g = geo.groups;
    let shapes = format!("input {}, weight {}, {geo:?}", x.shape(), weight.shape());
    if geo.stride == 0 || g == 0 || c % g != 0 || co % g != 0 || cg != c / g {
        return Err(Error::shape(OP, format!("{shapes}: channels do not match the groups")));
    }
    if kh == 0 || kw == 0 || h + 2 * geo.padding < kh || w + 2 * geo.padding < kw {
        return Err(Error::shape(OP, format!("{shapes}: kernel larger than the padded input")));
    }
    let y = be(x).conv2d(x, weight, geo)?;
    super::flops::conv(y.dims(), c, (kh, kw), geo);
    let (xs, ws) = (x.clone(), weight.clone());
    Ok(record1(OP, &[x, weight], y, move |dy, needs| {
        let (dx, dw) = be(dy).conv2d_backward(&xs, &ws, dy, geo, needs[0])?;
        Ok(vec![dx, Some(dw)])
    }))
}
