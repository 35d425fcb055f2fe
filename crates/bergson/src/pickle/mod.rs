//! Reading and writing `torch.save` files through libtorch's own pickler.
