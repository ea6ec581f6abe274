"""Research code that builds the zoo: it trains the generators and the MNIST ViT and writes what ships.

Install it with the ``zoo`` extra (``pip install -e '.[zoo]'``). The product never imports this package:
it reads only what training wrote (sample sets and their manifest, the DDPM's and the ViT's weights)
through the light modules of :mod:`forensics.zoo`.

- :mod:`.generators` trains each zoo generator on T and writes its sample sets
  (``python -m forensics.zoo.training.generators``);
- :mod:`.encoder` trains the ``mnist-vit`` protocol's ViT (``python -m forensics.zoo.training.encoder``);
- :mod:`.models` holds the generators' networks, :mod:`.samplers` the diffusion schedules and samplers.
"""
