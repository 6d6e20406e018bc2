fn main() {
    print!("{}", kuberaft_operator::crd::crd_yaml());
}
