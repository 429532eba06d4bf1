//! `kaprobe`: see `kaprobe --help` (everything is in the library: src/lib.rs).
fn main() {
    kaprobe_user::main()
}
