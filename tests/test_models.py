import pytest
import torch

from sfdd_flwr.models.convnet import ConvNet, NetworkSpec, build_network


@pytest.mark.parametrize(
    ("channels", "size"), [(1, (28, 28)), (3, (32, 32))], ids=["28x28-gray", "32x32-rgb"]
)
def test_convnet_has_2048_features_for_mnist_and_cifar_sizes(channels, size):
    network = ConvNet(NetworkSpec(channels=channels, num_classes=10, image_size=size))
    assert network.num_features == 2048
    assert network.classifier.in_features == 2048
    images = torch.randn(2, channels, *size)
    assert network.features(images).shape == (2, 2048)
    assert network(images).shape == (2, 10)


def test_convnet_layout_matches_dc_reference():
    network = ConvNet(NetworkSpec(channels=1, num_classes=10, image_size=(28, 28)))
    kinds = [type(layer).__name__ for layer in network.body]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2d"] * 3
    first, second = network.body[0], network.body[4]
    assert first.padding == (3, 3) and second.padding == (1, 1)
    norm = network.body[1]
    assert norm.num_groups == norm.num_channels == 128 and norm.affine


def test_doorping_reference_convnet_has_a_hidden_dense_layer_before_the_classifier():
    network = ConvNet(NetworkSpec(channels=1, num_classes=10, image_size=(28, 28), net_hidden=192))
    assert (network.hidden.in_features, network.hidden.out_features) == (2048, 192)
    assert network.classifier.in_features == 192
    names = [name for name, _ in network.named_parameters()]
    assert names[-4:] == ["hidden.weight", "hidden.bias", "classifier.weight", "classifier.bias"]
    images = torch.randn(3, 1, 28, 28)
    expected = network.classifier(torch.relu(network.hidden(network.features(images))))
    assert torch.allclose(network(images), expected)
    assert ConvNet(NetworkSpec(1, 10, (28, 28))).hidden is None


def test_security_variant_without_pooling_and_with_sigmoid():
    spec = NetworkSpec(1, 10, (28, 28), net_activation="sigmoid", net_pooling="none")
    network = ConvNet(spec)
    assert not any(isinstance(layer, (torch.nn.AvgPool2d, torch.nn.MaxPool2d)) for layer in network.body)
    assert any(isinstance(layer, torch.nn.Sigmoid) for layer in network.body)
    assert network.num_features == 128 * 32 * 32


def test_build_network_is_a_function_of_the_seed_and_leaves_global_rng_alone():
    spec = NetworkSpec(1, 10, (28, 28), net_width=8)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_network(spec, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    same = build_network(spec, seed=5)
    other = build_network(spec, seed=6)
    for a, b, c in zip(first.parameters(), same.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        ConvNet(NetworkSpec(1, 10, (28, 28), net_activation="tanh"))
