fn main() -> std::process::ExitCode {
    shop_probe::cli(std::env::args())
}
