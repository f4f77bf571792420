pub mod inference;
