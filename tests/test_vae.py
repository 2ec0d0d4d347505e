"""The Bernoulli VAE: its KL term against a Monte Carlo estimate, its likelihood against
a hand-written Bernoulli, and training through `metax.learner.fit` lowering the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metax


def setup(pixels=6, latent=3):
    vae = metax.models.bernoulli_vae(pixels, latent, hidden=16)
    x = (jax.random.uniform(jax.random.PRNGKey(0), (4, pixels)) > 0.5).astype(jnp.float32)
    return vae, vae.init(jax.random.PRNGKey(1), x), x


def test_kl_term_matches_a_monte_carlo_estimate():
    vae, params, x = setup()
    elbo_terms, encode, _ = vae.apply
    _, kl = elbo_terms(params, x, jax.random.PRNGKey(2))
    mu, log_var = (np.asarray(a, np.float64) for a in encode(params, x))
    z = mu + np.exp(0.5 * log_var) * np.random.default_rng(0).standard_normal((200_000, *mu.shape))
    log_q = -0.5 * np.sum((z - mu) ** 2 / np.exp(log_var) + log_var, axis=-1)
    log_p = -0.5 * np.sum(z**2, axis=-1)  # the 2 pi terms cancel
    np.testing.assert_allclose(kl, np.mean(log_q - log_p, axis=0), rtol=0.02, atol=2e-3)


def test_nll_is_the_bernoulli_likelihood_at_the_reparameterised_draw():
    vae, params, x = setup()
    elbo_terms, encode, decode = vae.apply
    rng = jax.random.PRNGKey(3)
    nll, _ = elbo_terms(params, x, rng)
    mu, log_var = encode(params, x)
    z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape)
    p = 1.0 / (1.0 + np.exp(-np.asarray(decode(params, z), np.float64)))
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(nll, -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=-1), rtol=1e-5)


def test_training_through_fit_lowers_the_negative_elbo():
    images, _ = metax.data.load_digits()
    data = jnp.asarray(images.reshape(len(images), -1)[:256] / max(1.0, float(images.max())))
    vae = metax.models.bernoulli_vae(data.shape[1], 4, hidden=32)
    optimizer = optax.adam(3e-3)

    def loss(params, key, data):
        return jnp.mean(sum(vae.apply[0](params, data, key)))

    params = vae.init(jax.random.PRNGKey(0), data[:2])
    step = metax.learner.gradient_step(loss, optimizer)
    _, losses = metax.learner.fit(step, (params, optimizer.init(params)), jax.random.PRNGKey(1), 150, data, chunk=75)
    assert losses[-10:].mean() < 0.8 * losses[:10].mean(), (losses[:10].mean(), losses[-10:].mean())
