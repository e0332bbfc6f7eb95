"""A labelled set for memory search: one user's memories, and questions whose answer is one memory.

Most questions paraphrase their memory with few or no shared words ("kid's birthday" for "daughter ... born"),
the way people ask; a few share a word, and several share a word with a *wrong* memory ("birthday", "food",
"play"), so a lexical ranking has to be fooled sometimes. Used by tests/test_memory_store.py (recall@3,
lexical vs hybrid) and bench/memory.py (as realistic text).
"""

MEMORIES = [
    "My daughter Emma was born on 14 March 2015.",                      # 0
    "I am allergic to peanuts.",                                       # 1
    "I drive a blue 2018 Toyota Corolla.",                             # 2
    "My favourite cuisine is Thai food, especially green curry.",      # 3
    "I work as a nurse at the Lyon university hospital.",              # 4
    "I run every Tuesday and Thursday morning before work.",           # 5
    "My partner is called Sam and works as a carpenter.",              # 6
    "I prefer replies in short bullet points.",                        # 7
    "My laptop is a ThinkPad X1 running Fedora Linux.",                # 8
    "I am learning Japanese and take lessons on Saturdays.",           # 9
    "My cat Pixel is terrified of the vacuum cleaner.",                # 10
    "I don't drink alcohol.",                                          # 11
    "We are planning a trip to Portugal in September.",                # 12
    "My mother lives in Montreal.",                                    # 13
    "I play the cello in a community orchestra.",                      # 14
    "My budget for a new phone is 400 euros.",                         # 15
    "I have been vegetarian since 2019.",                              # 16
    "I support Olympique Lyonnais.",                                   # 17
    "I am afraid of flying and take trains whenever I can.",           # 18
    "My apartment is on the fifth floor and the building has no elevator.",  # 19
    "I take blood pressure medication every morning.",                 # 20
    "My favourite author is Ursula K. Le Guin.",                       # 21
    "I am saving money to buy a house next year.",                     # 22
    "My son Leo plays basketball on Wednesdays.",                      # 23
    "I use Python and Rust at work.",                                  # 24
    "My birthday is on 2 November.",                                   # 25
    "I wake up at 6 am on weekdays.",                                  # 26
    "I grow tomatoes and basil on my balcony.",                        # 27
    "I am red-green colour blind.",                                    # 28
    "My bank is ING.",                                                 # 29
    "My brother Tom is a pilot for Air France.",                       # 30
    "I speak French, English and a little German.",                    # 31
    "I meditate for ten minutes every evening.",                       # 32
    "I broke my left wrist skiing in 2021.",                           # 33
    "I dislike horror movies.",                                        # 34
    "My dentist appointment is on 12 December at 9:00.",               # 35
    "I am training for the Paris marathon in April.",                  # 36
    "I volunteer at the food bank on Sunday mornings.",                # 37
    "My car insurance renews in January.",                             # 38
    "I drink my coffee black, no sugar.",                              # 39
]

# (question, index of the memory that answers it)
QUERIES = [
    ("When is my kid's birthday?", 0),
    ("Which foods could give me a severe reaction?", 1),
    ("What vehicle do I own?", 2),
    ("Suggest a restaurant I would enjoy", 3),
    ("What is my job?", 4),
    ("How often do I go jogging?", 5),
    ("Who is my significant other?", 6),
    ("How should you format answers for me?", 7),
    ("Which operating system is on my computer?", 8),
    ("Which foreign language am I studying?", 9),
    ("What frightens my pet?", 10),
    ("Can I have wine with dinner?", 11),
    ("Where are we going on holiday?", 12),
    ("In which city does my mum reside?", 13),
    ("What musical instrument do I play?", 14),
    ("How much can I spend on a smartphone?", 15),
    ("Do I eat meat?", 16),
    ("Which soccer team do I cheer for?", 17),
    ("How do I prefer to travel long distances?", 18),
    ("Is there a lift in my building?", 19),
    ("Which pills do I need daily?", 20),
    ("Who is my favourite writer?", 21),
    ("What is my sibling's profession?", 30),
    ("What vegetables do I cultivate at home?", 27),
    ("Do I have any problems with my eyesight?", 28),
    ("What injuries have I had?", 33),
    ("What kind of films should you not recommend to me?", 34),
    ("When do I see the dentist?", 35),
    ("What race am I preparing for?", 36),
    ("How do I take my coffee?", 39),
    ("What charity work do I do?", 37),
    ("What sport does my boy do?", 23),
    # shared words: lexical ranking finds these, and the hybrid must not lose them
    ("Which bank am I with?", 29),
    ("What is my cat called?", 10),
    ("When does my car insurance renew?", 38),
    ("What languages do I speak?", 31),
    ("What time do I wake up?", 26),
    ("Which programming languages do I use at work?", 24),
    ("When do I meditate?", 32),
    ("What am I saving money for?", 22),
    ("When is my birthday?", 25),
]
