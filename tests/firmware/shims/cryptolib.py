# CPython stand-in for MicroPython's `cryptolib` (ECB only, like an ESP32 build), on top of
# the `cryptography` package. Unit tests only; the virtual badge brings its own.
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class aes:
    def __init__(self, key, mode):
        if mode != 1:
            raise ValueError("mode")
        self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

    def encrypt(self, block):
        return self._enc.update(bytes(block))
