fn main() -> std::process::ExitCode {
    shop_bench::main()
}
