"""The request pipeline every transport shares: query, auth, uploads, decoding, answers, errors."""
