//! Secret values: the node secret key (`nsk`) and AES-256-GCM decryption (`cipher`).

pub mod cipher;
pub mod nsk;
