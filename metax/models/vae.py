"""A variational autoencoder with Bernoulli pixels and MLP encoder and decoder.

Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
https://arxiv.org/abs/1312.6114. Train it with `metax.learner.fit` on the mean of
`nll + kl` (the negative ELBO); its decoder then defines latent-inference problems
(find z for an image x), as in `experiments/noisy_inference`.
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax


class BernoulliVAE(NamedTuple):
    """Pure functions sharing one set of parameters (`hk.multi_transform`, no apply rng).

    Attributes:
      init: `init(rng, x) -> params` for images `x` `(batch, pixels)`.
      apply: `(elbo_terms, encode, decode)`, each called as `f(params, ...)`:
        `elbo_terms(params, x, rng) -> (nll, kl)`, each `(batch,)`: the Bernoulli negative
        log-likelihood of x at one reparameterised draw z ~ q(z|x), and KL(q(z|x) || N(0, I))
        in closed form; `encode(params, x) -> (mu, log_var)`, each `(batch, latent_dim)`;
        `decode(params, z) -> logits` `(batch, pixels)`.

    Example:
      >>> vae = metax.models.bernoulli_vae(pixels=4, latent_dim=2, hidden=8)
      >>> params = vae.init(jax.random.PRNGKey(0), jnp.zeros((3, 4)))
      >>> elbo_terms, encode, decode = vae.apply
      >>> nll, kl = elbo_terms(params, jnp.ones((3, 4)), jax.random.PRNGKey(1))
      >>> nll.shape, kl.shape, decode(params, jnp.zeros((3, 2))).shape
      ((3,), (3,), (3, 4))
    """

    init: object
    apply: tuple


def bernoulli_vae(pixels: int, latent_dim: int, hidden: int) -> BernoulliVAE:
    """A VAE over `pixels` values in [0, 1]: encoder and decoder MLPs `[hidden, hidden]`
    (modules "encoder" and "decoder"), a diagonal Gaussian q(z|x) over `latent_dim`
    latents, a N(0, I) prior and Bernoulli pixels (the decoder returns logits).

    Example:
      >>> vae = metax.models.bernoulli_vae(pixels=4, latent_dim=2, hidden=8)
      >>> params = vae.init(jax.random.PRNGKey(0), jnp.zeros((3, 4)))
      >>> sorted({name.split("/")[0] for name in params})
      ['decoder', 'encoder']
    """

    def build():
        encoder = hk.nets.MLP([hidden, hidden, 2 * latent_dim], name="encoder")
        decoder = hk.nets.MLP([hidden, hidden, pixels], name="decoder")

        def encode(x):
            mu, log_var = jnp.split(encoder(x), 2, axis=-1)
            return mu, log_var

        def elbo_terms(x, rng):
            mu, log_var = encode(x)
            z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape)
            nll = jnp.sum(optax.sigmoid_binary_cross_entropy(decoder(z), x), axis=-1)
            kl = 0.5 * jnp.sum(jnp.exp(log_var) + mu**2 - 1.0 - log_var, axis=-1)
            return nll, kl

        def init(x):
            return decoder(encode(x)[0])

        return init, (elbo_terms, encode, decoder)

    transformed = hk.without_apply_rng(hk.multi_transform(build))
    return BernoulliVAE(transformed.init, transformed.apply)
